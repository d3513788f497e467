"""DeepFool against closed forms and torchattacks; Transfer against its inner attack run alone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import Affine
from robustact.attacks.base import Attack
from robustact.attacks.deepfool import DeepFool
from robustact.attacks.pgd import PGD
from robustact.attacks.transfer import Transfer
from robustact.data import load_dataset
from robustact.errors import ConfigError
from robustact.models import create_model

# ---- tiny models ----------------------------------------------------------------------------


def affine_problem(classes: int, n: int = 12, seed: int = 0) -> tuple[Affine, torch.Tensor,
                                                                         torch.Tensor]:
    """An affine model and inputs in [0.35, 0.65] labelled with its own predictions."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.35 + 0.3 * torch.rand(n, 1, 4, 4, generator=gen)
    weight = torch.randn(classes, 16, generator=gen)
    model = Affine(weight, 0.1 * torch.randn(classes, generator=gen))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def closed_form_distance(model: Affine, x: torch.Tensor, y: torch.Tensor, dual_p: float
                         ) -> torch.Tensor:
    """(N,) min_j |f_y - f_j| / ||w_y - w_j||_q: the exact distance to misclassification."""
    with torch.no_grad():
        logits = model(x)
        w = model.weight
        out = torch.full((x.shape[0],), math.inf)
        for j in range(w.shape[0]):
            gap = (logits[:, j] - logits.gather(1, y[:, None]).squeeze(1)).abs()
            dual = (w[j][None] - w[y]).norm(p=dual_p, dim=1)
            dist = torch.where(y == j, torch.full_like(gap, math.inf), gap / dual)
            out = torch.minimum(out, dist)
    return out


# ---- trained models (shared, ~1 epoch on 2000 Fashion-MNIST images) ----------------------------


def _train(seed: int, data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("small_cnn")
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    order = torch.randperm(x.shape[0])
    for lo in range(0, x.shape[0], 64):
        batch = order[lo:lo + 64]
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def fmnist() -> dict[str, object]:
    train = load_dataset("fashion_mnist", "train").subset(2000)
    test = load_dataset("fashion_mnist", "test").subset(64)
    data = (train.images.float() / 255, train.labels)
    return {"a": _train(0, data), "b": _train(1, data),
            "x": test.images.float() / 255, "y": test.labels}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---- DeepFool -------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize(("norm", "dual_p"), [("l2", 2.0), ("linf", 1.0)])
def test_deepfool_finds_the_closed_form_minimal_perturbation_of_an_affine_model(
        classes: int, norm: str, dual_p: float) -> None:
    model, x, y = affine_problem(classes)
    exact = closed_form_distance(model, x, y, dual_p)
    # x lies in [0.35, 0.65]: perturbations this small never reach the [0, 1] box
    assert float(exact.max()) < 0.25
    attack = DeepFool(eps=10.0, norm=norm, steps=1, overshoot=0.02)
    result = attack(model, x, y)
    found = attack.last_min_norms
    assert found is not None and result.success.all()
    assert torch.isfinite(found).all()
    # one step lands at (1 + overshoot) * (d + 1e-4): on the far side of the nearest boundary
    assert (found >= exact).all()
    assert (found <= 1.02 * (exact + 1e-4) + 1e-5).all()
    assert torch.allclose(result.norms, found)  # eps = 10 does not clip
    assert (result.queries == 3).all()  # step 1, the check of its result, the judgement


def test_deepfool_stops_each_example_when_it_is_misclassified() -> None:
    model, x, y = affine_problem(5)
    attack = DeepFool(eps=10.0, norm="l2", steps=50)
    result = attack(model, x, y)
    # an affine model is fooled by the first step: the second forward sees it and stops
    assert (result.queries == 3).all()
    assert len(result.loss_trace) == 50
    assert result.loss_trace[0] < 0 and result.loss_trace[1:] == [0.0] * 49


def test_deepfool_gradient_health_ignores_examples_already_fooled() -> None:
    """An affine model's input gradient has no zero entry; clean errors (half the batch here)
    are done before the first step and get a zero gradient row, which must not be counted as
    a masked gradient (it was: 0.5 bad, and the demo flagged k-WTA 0.1 on it)."""
    model, x, y = affine_problem(5, n=12)
    y = y.clone()
    y[::2] = (y[::2] + 1) % 5  # every other example misclassified from the start
    result = DeepFool(eps=10.0, norm="l2", steps=3)(model, x, y)
    assert result.success.all()
    assert result.grad_bad_fraction is not None and result.grad_bad_fraction < 0.01


@pytest.mark.parametrize(("norm", "dual_p"), [("l2", 2.0), ("linf", 1.0)])
def test_deepfool_robust_accuracy_at_eps(norm: str, dual_p: float) -> None:
    model, x, y = affine_problem(5)
    exact = closed_form_distance(model, x, y, dual_p)
    for i in range(3):
        d = float(exact[i])
        xi, yi = x[i:i + 1], y[i:i + 1]
        small = DeepFool(eps=d / 2, norm=norm)
        assert not small(model, xi, yi).success.item()  # counted robust at eps = d / 2
        assert small.last_min_norms is not None
        assert small.last_min_norms[0] == pytest.approx(1.02 * (d + 1e-4), rel=1e-4)
        large = DeepFool(eps=2 * d, norm=norm)
        assert large(model, xi, yi).success.item()  # broken at eps = 2 d
        assert large.last_min_norms is not None
        assert large.last_min_norms[0] == pytest.approx(1.02 * (d + 1e-4), rel=1e-4)


def test_deepfool_min_norms_are_zero_for_clean_errors_and_inf_when_not_found() -> None:
    model, x, y = affine_problem(5)
    wrong = (y + 1) % 5
    attack = DeepFool(eps=0.1, norm="l2")
    result = attack(model, x, wrong)
    assert attack.last_min_norms is not None
    assert (attack.last_min_norms == 0).all() and result.success.all()
    assert (result.x_adv == x).all()

    class Constant(nn.Module):  # no input gradient: nothing can be found
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b.expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]

    attack = DeepFool(eps=0.1, norm="linf", steps=3)
    result = attack(Constant(), x[:4], torch.zeros(4, dtype=torch.long))
    assert attack.last_min_norms is not None
    assert torch.isinf(attack.last_min_norms).all() and not result.success.any()
    assert result.grad_bad_fraction == 1.0


def test_deepfool_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="candidates"):
        DeepFool(eps=0.1, candidates=1)
    with pytest.raises(ConfigError, match="steps"):
        DeepFool(eps=0.1, steps=0)
    with pytest.raises(ConfigError, match="overshoot"):
        DeepFool(eps=0.1, overshoot=-0.1)
    assert DeepFool.bounded is False
    params = DeepFool(eps=0.1, norm="l2", steps=20).hyperparameters()
    assert params == {"eps": 0.1, "norm": "l2", "steps": 20, "candidates": 10,
                      "overshoot": 0.02}


def test_deepfool_l2_matches_torchattacks_on_a_trained_cnn(fmnist: dict) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fmnist["a"], fmnist["x"], fmnist["y"]
    assert accuracy(model, x, y) > 0.6
    attack = DeepFool(eps=100.0, norm="l2", steps=50, candidates=10, overshoot=0.02)
    result = attack(model, x, y)  # unbounded in effect: eps = 100 never clips in [0, 1]^784
    ours = attack.last_min_norms
    assert ours is not None and torch.isfinite(ours).float().mean() >= 0.9
    assert result.success.float().mean() >= 0.9

    # torchattacks loops over examples (slow): compare on 12 correctly classified points
    with torch.no_grad():
        pick = (model(x).argmax(1) == y).nonzero().squeeze(1)[:12]
    theirs_adv = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x[pick], y[pick])
    with torch.no_grad():
        logits = model(theirs_adv)
    # torchattacks stops on torch.max's verdict, which can accept an exact tie with the label
    true = logits.gather(1, y[pick, None]).squeeze(1)
    theirs_found = logits.scatter(1, y[pick, None], -math.inf).amax(1) >= true - 1e-4
    theirs = (theirs_adv - x[pick]).flatten(1).norm(dim=1)
    both = torch.isfinite(ours[pick]) & theirs_found
    assert both.sum() >= 10
    ours_med, theirs_med = ours[pick][both].median(), theirs[both].median()
    ratio = float(ours_med / theirs_med)
    print(f"\ndeepfool L2: found {int(torch.isfinite(ours).sum())}/{len(y)}, success "
          f"{result.success.float().mean():.3f}; median min norm on {int(both.sum())} points: "
          f"ours {ours_med:.4f}, torchattacks {theirs_med:.4f}, ratio {ratio:.3f}")
    assert 1 / 1.5 <= ratio <= 1.5


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.5), ("linf", 0.03)])
def test_deepfool_outputs_stay_in_the_ball_and_success_matches_predictions(
        fmnist: dict, norm: str, eps: float) -> None:
    model, x, y = fmnist["a"], fmnist["x"][:24], fmnist["y"][:24]
    attack = DeepFool(eps=eps, norm=norm, steps=20, batch_size=10)
    result = attack(model, x, y)
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    min_norms = attack.last_min_norms
    assert min_norms is not None and min_norms.shape == (24,)
    # an adversarial found within eps survives the projection unchanged
    assert result.success[min_norms <= eps].all()
    print(f"\ndeepfool {norm} eps {eps}: robust accuracy {result.robust_accuracy:.3f}, "
          f"from min norms {(min_norms > eps).float().mean():.3f}, {result.seconds:.2f}s")


# ---- Transfer -------------------------------------------------------------------------------


def test_transfer_from_the_target_itself_equals_the_inner_attack(fmnist: dict) -> None:
    model, x, y = fmnist["a"], fmnist["x"][:40], fmnist["y"][:40]
    direct = PGD(eps=0.1, steps=3, batch_size=16, seed=3)(model, x, y)
    inner = PGD(eps=0.1, steps=3, batch_size=16, seed=3)
    transfer = Transfer(surrogate=model, attack=inner, eps=0.1, batch_size=24)
    result = transfer(model, x, y)
    assert torch.equal(result.x_adv, direct.x_adv)
    assert torch.equal(result.success, direct.success)
    assert (result.queries == 1).all()
    assert Transfer.gradient_free


def test_transfer_between_two_models_trained_on_the_same_data(fmnist: dict) -> None:
    source, target, x, y = fmnist["a"], fmnist["b"], fmnist["x"], fmnist["y"]
    transfer = Transfer(surrogate=source, attack=PGD(eps=0.15, steps=10), eps=0.15,
                        surrogate_name="small_cnn seed 0")
    result = transfer(target, x, y)
    clean = accuracy(target, x, y)
    surrogate = transfer.last_surrogate_result
    assert surrogate is not None
    print(f"\ntransfer: target clean {clean:.3f} -> {result.robust_accuracy:.3f}; "
          f"white-box on surrogate {surrogate.robust_accuracy:.3f}")
    assert surrogate.robust_accuracy < 0.2
    assert result.robust_accuracy < clean - 0.2
    assert (result.norms <= 0.15 + 1e-6).all()
    params = result.params
    assert params["attack"] == "transfer" and params["inner_attack"] == "pgd"
    assert params["surrogate"] == "SmallCNN"
    assert params["surrogate_name"] == "small_cnn seed 0"
    assert params["inner_params"]["steps"] == 10


def test_transfer_never_computes_the_targets_gradients(fmnist: dict) -> None:
    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            raise AssertionError("backward through the target")

    class Trapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(NoBackward.apply(x))

    target = Trapped(fmnist["b"])
    x, y = fmnist["x"][:16], fmnist["y"][:16]
    with pytest.raises(AssertionError, match="backward through the target"):
        PGD(eps=0.1, steps=1)(target, x, y)  # the trap works
    target.train()
    result = Transfer(surrogate=fmnist["a"], attack=PGD(eps=0.1, steps=3), eps=0.1)(target, x, y)
    assert (result.queries == 1).all()
    assert target.training and not fmnist["a"].training  # modes restored


def test_transfer_restores_the_surrogate_mode_and_rejects_mismatches(fmnist: dict) -> None:
    surrogate = fmnist["a"]
    surrogate.train()
    try:
        Transfer(surrogate=surrogate, attack=PGD(eps=0.1, steps=1), eps=0.1)(
            fmnist["b"], fmnist["x"][:4], fmnist["y"][:4])
        assert surrogate.training
    finally:
        surrogate.eval()
    with pytest.raises(ConfigError, match="eps"):
        Transfer(surrogate=surrogate, attack=PGD(eps=0.1), eps=0.2)
    with pytest.raises(ConfigError, match="norm"):
        Transfer(surrogate=surrogate, attack=PGD(eps=0.1, norm="l2"), eps=0.1, norm="linf")
    with pytest.raises(ConfigError, match="Attack instance"):
        Transfer(surrogate=surrogate, attack=PGD, eps=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nn.Module"):
        Transfer(surrogate=lambda x: x, attack=PGD(eps=0.1), eps=0.1)  # type: ignore[arg-type]
    assert isinstance(Transfer(surrogate=surrogate, attack=DeepFool(eps=0.5, norm="l2"),
                               eps=0.5), Attack)
