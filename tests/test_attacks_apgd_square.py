"""APGD, Square and the gradient-estimation attack against independent statements of them:
the checkpoint formula, a closed-form optimum on a linear model, torchattacks' implementations,
autograd gradients, and an independent per-example log of every forward pass."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from conftest import fashion_test, fit_on_fashion
from robustact.attacks.apgd import APGD, APGDCE, APGDDLR, apgd_checkpoints
from robustact.attacks.base import Attack, QueryCounter
from robustact.attacks.gradient_estimation import GradientEstimation, antithetic_gradient
from robustact.attacks.losses import margin
from robustact.attacks.square import Square, square_p, square_side
from robustact.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, classes)).eval()


def tiny_batch(model: nn.Module, n: int = 24, wrong: int = 4) -> tuple[torch.Tensor, ...]:
    """Random 1x8x8 images labelled with the model's prediction, the first ``wrong`` mislabelled
    (so they are misclassified before any attack)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=gen)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:wrong] = (y[:wrong] + 1) % logits.shape[1]
    return x, y


class ForwardLog(nn.Module):
    """Wraps a model; logs for every forward which example each row comes from (the nearest
    clean input in L-inf) and whether the row is misclassified. Independent of QueryCounter."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.model, self.x, self.y = model, x.flatten(1), y
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs)
        dist = torch.cdist(inputs.flatten(1), self.x, p=math.inf)
        owner = dist.argmin(1)
        self.calls.append((owner, out.argmax(1) != self.y[owner]))
        return out

    def counts(self) -> torch.Tensor:
        total = torch.zeros(self.x.shape[0], dtype=torch.int64)
        for owner, _ in self.calls:
            total.index_add_(0, owner, torch.ones_like(owner))
        return total

    def queried_after_fooled(self) -> int:
        """Rows forwarded for an example after a forward found it misclassified, not counting
        the base class's final judging pass (the last call)."""
        fooled = torch.zeros(self.x.shape[0], dtype=torch.bool)
        late = 0
        for owner, wrong in self.calls[:-1]:
            late += int(fooled[owner].sum())
            fooled[owner[wrong]] = True
        return late


def check_invariants(attack: Attack, model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> None:
    result = attack(model, x, y)
    delta = result.x_adv - x
    if attack.norm == "linf":
        assert delta.abs().max() <= attack.eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= attack.eps + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    assert result.queries.shape == y.shape and result.queries.dtype == torch.int64
    assert result.params["attack"] == attack.name
    assert result.params["eps"] == attack.eps
    again = attack(model, x, y)
    assert torch.equal(again.x_adv, result.x_adv), "not deterministic for a fixed seed"


# ---- APGD -------------------------------------------------------------------------------------

def checkpoints_from_formula(steps: int) -> list[int]:
    """Exact rational arithmetic: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06) while <= 1; w_j = ceil(p_j * steps) for j >= 1."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(pj * steps) for pj in p[1:]})


def checkpoints_reference_rule(steps: int) -> list[int]:
    """The interval rule of AutoAttack's autopgd_base.py (integer interval lengths)."""
    k, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(
        int(0.06 * steps), 1)
    out, at = [], 0
    while at + k <= steps:
        at += k
        out.append(at)
        k = max(k - shrink, least)
    return out


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 37, 50, 100, 137, 250, 1000])
def test_apgd_checkpoints_equal_formula(steps: int) -> None:
    assert apgd_checkpoints(steps) == checkpoints_from_formula(steps)


def test_apgd_checkpoints_match_reference_at_multiples_of_100() -> None:
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for steps in (100, 200, 1000):
        assert apgd_checkpoints(steps) == checkpoints_reference_rule(steps)


@pytest.mark.parametrize("attack", [
    APGD(eps=0.1, steps=12), APGD(eps=0.8, norm="l2", steps=12), APGDCE(eps=0.1, steps=12),
    APGDDLR(eps=0.1, steps=12, restarts=2),
], ids=["apgd-linf", "apgd-l2", "apgd-ce", "apgd-dlr"])
def test_apgd_invariants(attack: APGD) -> None:
    model = tiny_cnn()
    x, y = tiny_batch(model)
    check_invariants(attack, model, x, y)


def test_apgd_queries_per_example_and_restarts() -> None:
    model = tiny_cnn()
    x, y = tiny_batch(model)
    log = ForwardLog(model, x, y)
    steps = 10
    result = APGD(eps=0.1, steps=steps, restarts=2)(log, x, y)
    assert torch.equal(result.queries, log.counts())
    assert (result.queries[:4] == 2).all(), "clean errors: clean check + judging pass only"
    # the second restart runs only on examples the first did not fool; an example fooled in a
    # run retires after the iteration that fooled it, the others iterate on: clean check, the
    # start's gradient and k iterations, plus the judging pass
    two_runs = 1 + 2 * (steps + 1) + 1
    rest, fooled = result.queries[4:], result.success[4:]
    assert (rest[~fooled] == two_runs).all()
    assert ((rest[fooled] >= 1 + 2 + 1) & (rest[fooled] < two_runs)).all()
    assert (rest[fooled] == 1 + 2 + 1).any(), "fooled by the first step: retired at once"
    assert len(result.loss_trace) == steps  # one entry per iteration of the first restart


def test_apgd_reaches_closed_form_optimum_on_linear_model() -> None:
    torch.manual_seed(3)
    d, eps = 64, 0.05
    x = torch.rand(32, 1, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).eval()
    y = torch.zeros(32, dtype=torch.long)
    with torch.no_grad():
        w = model[1].weight[1] - model[1].weight[0]
        # optimal L-inf attack: move each pixel eps towards sign(w_other - w_true), clip
        x_opt = (x.flatten(1) + eps * w.sign()).clamp(0, 1)
        gain = (x_opt - x.flatten(1)) @ w
        # bias so that even the optimum stays correctly classified: APGD returns its best point
        model[1].bias[0] = model[1].bias[1] + (x.flatten(1) @ w + gain).max() + 1.0
        optimum = margin(model(x_opt.view_as(x)), y)
    result = APGD(eps=eps, steps=20)(model, x, y)
    assert not result.success.any()
    with torch.no_grad():
        reached = margin(model(result.x_adv), y)
    assert torch.allclose(reached, optimum, atol=1e-4), (reached - optimum).abs().max()


def test_apgd_l2_reaches_closed_form_optimum_on_linear_model() -> None:
    torch.manual_seed(4)
    d, eps = 64, 0.5
    x = 0.25 + 0.5 * torch.rand(16, 1, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).eval()
    y = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        w = model[1].weight[1] - model[1].weight[0]
        x_opt = x.flatten(1) + eps * w / w.norm()
        assert x_opt.min() > 0 and x_opt.max() < 1  # no clipping: the optimum is x + eps w/|w|
        model[1].bias[0] = model[1].bias[1] + (x_opt @ w).max() + 1.0
        optimum = margin(model(x_opt.view_as(x)), y)
    result = APGD(eps=eps, norm="l2", steps=20)(model, x, y)
    with torch.no_grad():
        reached = margin(model(result.x_adv), y)
    assert torch.allclose(reached, optimum, atol=1e-4), (reached - optimum).abs().max()


def test_apgd_validation() -> None:
    with pytest.raises(ConfigError, match="loss must be one of ce, dlr, margin"):
        APGD(eps=0.1, loss="hinge")
    with pytest.raises(ConfigError, match="targeted must be true or false, got 'abc'"):
        APGD(eps=0.1, targeted="abc")
    with pytest.raises(ConfigError, match="n_target_classes must be an integer >= 1"):
        APGD(eps=0.1, targeted=True, n_target_classes=0)
    with pytest.raises(ConfigError, match="rho must be in"):
        APGD(eps=0.1, rho=0)
    with pytest.raises(ConfigError, match="steps and restarts must be >= 1"):
        APGD(eps=0.1, steps=0)
    with pytest.raises(ConfigError, match="momentum must be in"):
        APGD(eps=0.1, momentum=1.5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ConfigError, match="DLR loss needs at least 3 classes"):
        APGDDLR(eps=0.1, steps=2)(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


def test_names_and_hyperparameters() -> None:
    assert (APGD.name, APGDCE.name, APGDDLR.name) == ("apgd", "apgd_ce", "apgd_dlr")
    assert (Square.name, GradientEstimation.name) == ("square", "gradest")
    assert Square.gradient_free and GradientEstimation.gradient_free and not APGD.gradient_free
    assert APGDCE(eps=0.1).hyperparameters()["loss"] == "ce"
    assert APGDDLR(eps=0.1).hyperparameters()["loss"] == "dlr"
    h = APGD(eps=0.1).hyperparameters()
    assert {k: h[k] for k in ("steps", "restarts", "rho", "momentum")} == {
        "steps": 100, "restarts": 1, "rho": 0.75, "momentum": 0.75}
    assert Square(eps=0.1).hyperparameters()["queries"] == 5000
    g = GradientEstimation(eps=0.1).hyperparameters()
    assert (g["samples"], g["sigma"], g["steps"]) == (100, 0.031, 100)
    assert g["step_size"] == pytest.approx(0.01)


# ---- Square -----------------------------------------------------------------------------------

def test_square_p_schedule() -> None:
    bounds = [(0, 1), (10, 1), (11, 2), (50, 2), (51, 4), (200, 4), (201, 8), (500, 8),
              (501, 16), (1000, 16), (1001, 32), (2000, 32), (2001, 64), (4000, 64), (4001, 128),
              (6000, 128), (6001, 256), (8000, 256), (8001, 512), (9999, 512)]
    for it, divisor in bounds:
        assert square_p(it, 10000, 0.8) == pytest.approx(0.8 / divisor), it
    # other budgets are rescaled to 10000 iterations
    assert square_p(1, 1000, 0.8) == pytest.approx(0.8)     # 10 of 10000
    assert square_p(2, 1000, 0.8) == pytest.approx(0.4)     # 20 of 10000
    assert square_p(801, 1000, 0.8) == pytest.approx(0.8 / 512)
    assert square_side(0.8, 784, 1, 28, 28) == 25     # round(sqrt(627.2))
    assert square_side(0.8 / 512, 784, 1, 28, 28) == 1
    assert square_side(0.8, 3 * 32 * 32, 3, 32, 32) == 29
    assert square_side(1.0, 64, 1, 8, 8) == 8


def test_square_invariants() -> None:
    model = tiny_cnn()
    x, y = tiny_batch(model)
    check_invariants(Square(eps=0.1, queries=60, restarts=2), model, x, y)


def test_square_queries_budget_and_frozen_when_fooled() -> None:
    model = tiny_cnn()
    x, y = tiny_batch(model, n=40)
    log = ForwardLog(model, x, y)
    budget = 300
    result = Square(eps=0.1, queries=budget)(log, x, y)
    assert torch.equal(result.queries, log.counts()), "QueryCounter disagrees with the log"
    assert result.queries.max() <= budget + 1  # + the base class's judging pass
    assert (result.queries[:4] == 2).all() and torch.equal(result.x_adv[:4], x[:4])
    assert log.queried_after_fooled() == 0
    fooled = result.success[4:]
    assert fooled.any() and (~fooled).any(), "pick eps so that the test sees both outcomes"
    assert (result.queries[4:][~fooled] == budget + 1).all()
    assert (result.queries[4:][fooled] < budget + 1).all()


def test_square_validation() -> None:
    with pytest.raises(ConfigError, match="norm must be linf or l2, got 'l1'"):
        Square(eps=0.1, norm="l1")
    with pytest.raises(ConfigError, match="queries must be >= 2"):
        Square(eps=0.1, queries=1)
    with pytest.raises(ConfigError, match="p_init must be in"):
        Square(eps=0.1, p_init=0)


# ---- gradient estimation ----------------------------------------------------------------------

def test_antithetic_gradient_correlates_with_true_gradient() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(margin(model(xg), y).sum(), xg)
    counter = QueryCounter(model, 8, torch.device("cpu"))
    # max_batch=6: chunks of 3 pairs, crossing example boundaries
    est = antithetic_gradient(counter, x, y, samples=1000, sigma=0.031, max_batch=6,
                              index=torch.arange(8))
    cos = torch.nn.functional.cosine_similarity(est.flatten(1), true.flatten(1))
    assert (cos > 0.5).all(), cos
    assert (counter.counts == 1000).all()
    few = antithetic_gradient(model, x, y, samples=10, sigma=0.031)
    cos_few = torch.nn.functional.cosine_similarity(few.flatten(1), true.flatten(1))
    assert cos_few.mean() < cos.mean()


def test_gradest_invariants() -> None:
    model = tiny_cnn()
    x, y = tiny_batch(model)
    check_invariants(GradientEstimation(eps=0.1, steps=5, samples=20), model, x, y)


def test_gradest_freezes_misclassified_points() -> None:
    model = tiny_cnn()
    x, y = tiny_batch(model, n=16)
    log = ForwardLog(model, x, y)
    steps, samples = 10, 20
    result = GradientEstimation(eps=0.1, steps=steps, samples=samples)(log, x, y)
    assert torch.equal(result.x_adv[:4], x[:4]), "a point misclassified at the start moved"
    assert (result.queries[:4] == 2).all()
    assert torch.equal(result.queries, log.counts())
    fooled = result.success[4:]
    assert fooled.any() and (~fooled).any()
    assert (result.queries[4:][~fooled] == 1 + steps * (samples + 1) + 1).all()
    # once the query after a step finds a point misclassified, no sample or step is spent on
    # it; the clean check, the per-step queries and the judging pass have < samples rows
    fooled_seen: set[int] = set()
    for owner, wrong in log.calls[:-1]:
        assert not fooled_seen & set(owner.tolist()), "queried after being fooled"
        if len(owner) < samples:
            fooled_seen |= set(owner[wrong].tolist())
    assert len(fooled_seen) == int(result.success.sum())


def test_gradest_validation() -> None:
    with pytest.raises(ConfigError, match="samples must be an even number"):
        GradientEstimation(eps=0.1, samples=7)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        GradientEstimation(eps=0.1, sigma=0)
    with pytest.raises(ConfigError, match="max_batch must be >= 2"):
        GradientEstimation(eps=0.1, max_batch=1)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        GradientEstimation(eps=0.1, steps=0)


# ---- strength on a trained model, against torchattacks ----------------------------------------

@pytest.fixture(scope="module")
def fashion() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained briefly on 2000 Fashion-MNIST images; 200 test images."""
    torch.manual_seed(0)
    model = fit_on_fashion(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(),
                                         nn.Linear(64, 10)))
    return (model, *fashion_test(200))


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def test_apgd_ce_at_least_as_strong_as_torchattacks(fashion) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fashion
    eps = 0.03
    ours = APGDCE(eps=eps, steps=100)(model, x, y).robust_accuracy
    theirs = robust_accuracy(model, torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1,
                                                      loss="ce", seed=0)(x, y), y)
    assert robust_accuracy(model, x, y) - ours > 0.15, "eps too small to compare"
    assert ours <= theirs + 0.02, (ours, theirs)


def test_square_at_least_as_strong_as_torchattacks(fashion) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fashion
    eps, budget = 0.05, 1000
    result = Square(eps=eps, queries=budget)(model, x, y)
    theirs = robust_accuracy(model, torchattacks.Square(model, eps=eps, n_queries=budget,
                                                        n_restarts=1, seed=0)(x, y), y)
    assert result.queries.max() <= budget + 1
    assert robust_accuracy(model, x, y) - result.robust_accuracy > 0.2
    assert result.robust_accuracy <= theirs + 0.04, (result.robust_accuracy, theirs)


def test_gradest_lowers_accuracy_of_trained_model(fashion) -> None:
    model, x, y = fashion
    x, y = x[:100], y[:100]
    clean = robust_accuracy(model, x, y)
    result = GradientEstimation(eps=0.05, steps=50)(model, x, y)
    assert clean - result.robust_accuracy > 0.2, (clean, result.robust_accuracy)


def test_apgd_dlr_counts_gradients_of_unfooled_points_only(relu_cnn, fmnist_test) -> None:
    """Once an example is fooled with its class third, DLR is exactly 1 (a flat loss): those
    zero gradients must not make a plain ReLU network look gradient-masked."""
    x, y = fmnist_test
    result = APGDDLR(eps=0.1, steps=30)(relu_cnn, x[:100], y[:100])
    assert result.robust_accuracy < 0.5  # the attack works (31% measured) ...
    assert result.grad_bad_fraction < 0.1  # ... and its gradients are informative
