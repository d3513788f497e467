"""Attack invariants over the registry, PGD against a trained model and against torchattacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustact.attacks import ATTACKS, PGD, create_attack, project
from robustact.errors import ConfigError, UnknownNameError

TOL = 1e-6  # float32 rounding of x + delta


def tiny_cnn(seed: int, channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).eval()


def cheap_kwargs(name: str, seed: int) -> dict[str, object]:
    """Small budgets so the property test stays fast; every attack's own defaults elsewhere."""
    kwargs: dict[str, object] = {
        "pgd": {"steps": 5, "restarts": 2}, "bim": {"steps": 3}, "mifgsm": {"steps": 3},
        "apgd": {"steps": 8}, "apgd_ce": {"steps": 8}, "apgd_dlr": {"steps": 8},
        "deepfool": {"steps": 5}, "square": {"queries": 40}, "gradest": {"steps": 3,
                                                                          "samples": 8},
    }.get(name, {})
    if name == "transfer":
        kwargs = {"surrogate": tiny_cnn(seed + 100),
                  "attack": PGD(eps=0.0, steps=3)}  # eps replaced below
    return dict(kwargs)


def build(name: str, eps: float, norm: str, seed: int) -> object:
    kwargs = cheap_kwargs(name, seed)
    if name == "transfer":
        kwargs["attack"] = PGD(eps=eps, norm=norm, steps=3)
    return create_attack(name, eps=eps, norm=norm, **kwargs)


NAME_NORMS = [(name, norm) for name in ATTACKS.names() for norm in ATTACKS.get(name).norms]


@pytest.mark.parametrize(("name", "norm"), NAME_NORMS)
def test_no_attack_leaves_the_eps_ball_or_the_image_range(name: str, norm: str) -> None:
    for seed in range(3):
        model = tiny_cnn(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(6, 1, 8, 8, generator=gen)
        x[0] = 0.0
        x[1] = 1.0  # at the box corners a step must be clipped
        y = torch.randint(0, 5, (6,), generator=gen)
        eps = [0.03, 0.3, 1.5][seed] if norm == "l2" else [0.01, 0.1, 0.5][seed]
        attack = build(name, eps, norm, seed)
        result = attack(model, x, y)
        delta = (result.x_adv - x).flatten(1)
        norms = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (norms <= eps + TOL).all(), (name, norms.max().item(), eps)
        assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
        assert torch.allclose(result.norms, norms, atol=1e-6)
        with torch.no_grad():
            assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
        assert result.queries.shape == (6,) and (result.queries >= 1).all()
        assert result.params["attack"] == ATTACKS.resolve(name)


def test_base_restores_mode_and_checks_inputs() -> None:
    model = tiny_cnn(0).train()
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    PGD(eps=0.1, steps=2)(model, x, y)
    assert model.training
    with pytest.raises(ConfigError, match=r"inputs must be in \[0, 1\]"):
        PGD(eps=0.1)(model, x * 3, y)
    with pytest.raises(ConfigError, match="eps must be a number >= 0"):
        PGD(eps=-1)
    with pytest.raises(UnknownNameError, match="unknown attack 'pdg'; valid names: .*pgd"):
        create_attack("pdg", eps=0.1)
    with pytest.raises(ConfigError, match="unknown attack loss"):
        PGD(eps=0.1, loss="hinge")
    with pytest.raises(ConfigError, match="norm must be linf or l2, got 'l1'"):
        create_attack("deepfool", eps=0.1, norm="l1")
    with pytest.raises(ConfigError, match="attack 'pgd' has no option 'targetd'; valid options: "
                                          ".*targeted, n_target_classes"):
        create_attack("pgd", eps=0.1, targetd=True)


def test_projection_is_onto_both_sets() -> None:
    x = torch.rand(5, 3, 4, 4)
    far = x + torch.randn_like(x) * 5
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        p = project(x, far, eps, norm)
        d = (p - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + TOL).all() and p.min() >= 0 and p.max() <= 1


def test_pgd_breaks_a_trained_relu_cnn(relu_cnn: nn.Module, fmnist_test: tuple) -> None:
    x, y = fmnist_test
    clean = (relu_cnn(x).argmax(1) == y).float().mean().item()
    assert clean > 0.75
    result = PGD(eps=0.3, steps=20)(relu_cnn, x, y)  # Madry et al.'s MNIST eps
    assert result.robust_accuracy < 0.03
    trace = result.loss_trace
    assert len(trace) == 20 and trace[-1] > trace[0]


def test_pgd_at_least_as_strong_as_torchattacks(relu_cnn: nn.Module, fmnist_test: tuple) -> None:
    torchattacks = pytest.importorskip("torchattacks")  # a dev dependency (Makefile installs it)
    x, y = fmnist_test
    eps, alpha, steps = 0.05, 0.01, 10
    ours = PGD(eps=eps, steps=steps, step_size=alpha, random_start=True, seed=0)(relu_cnn, x, y)
    torch.manual_seed(0)
    theirs_adv = torchattacks.PGD(relu_cnn, eps=eps, alpha=alpha, steps=steps,
                                  random_start=True)(x, y)
    with torch.no_grad():
        theirs = (relu_cnn(theirs_adv).argmax(1) == y).float().mean().item()
    assert ours.robust_accuracy <= theirs + 1e-9, (ours.robust_accuracy, theirs)
    assert (theirs_adv - x).abs().max() <= eps + TOL


def test_restarts_keep_each_examples_best(relu_cnn: nn.Module, fmnist_test: tuple) -> None:
    x, y = fmnist_test
    one = PGD(eps=0.03, steps=5, restarts=1, seed=1)(relu_cnn, x, y)
    four = PGD(eps=0.03, steps=5, restarts=4, seed=1)(relu_cnn, x, y)
    # restart 1 of the 4-restart run is the 1-restart run: what it broke stays broken
    assert (four.success | ~one.success).all()
    assert four.robust_accuracy <= one.robust_accuracy
    # later restarts run only on the examples the earlier ones left robust
    broke = one.success
    assert (four.queries[~broke] > one.queries[~broke]).all()
    assert torch.equal(four.queries[broke], one.queries[broke])


def test_bim_ceil_steps_is_the_sap_papers_iterative_attack() -> None:
    from robustact.attacks import create_attack

    # step 1/255 for ceil(lambda) steps, lambda on the 0..255 scale
    assert [create_attack("bim", eps=lam / 255, steps="ceil").steps
            for lam in (1, 2, 4, 64)] == [1, 2, 4, 64]
    assert create_attack("bim", eps=3 / 255, step_size=2 / 255, steps="ceil").steps == 2
    with pytest.raises(ConfigError, match="'ceil'"):
        create_attack("bim", eps=0.1, steps="many")


SYNCS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__",
         "__index__")


def test_pgd_steps_make_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the steps nothing reads a tensor back to the host (on a GPU each would stall),
    but the one retirement every RETIRE_EVERY steps when the attack judges."""
    import robustact.attacks.pgd as pgd

    inside = [False]
    synced: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: object, _name: str = name,
                _original: object = original, **kwargs: object) -> object:
            if inside[0]:
                synced.append(_name)
            return _original(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, spy)
    iterate = pgd.PGD._iterate

    def watched(self: pgd.PGD, *args: object, **kwargs: object) -> torch.Tensor:
        inside[0] = True
        try:
            return iterate(self, *args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(pgd.PGD, "_iterate", watched)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 5
    for kwargs in ({}, {"norm": "l2", "eps": 0.5}, {"restarts": 2}):
        PGD(**{"eps": 0.1, "steps": 4, **kwargs})(tiny_cnn(0), x, y)
    assert synced == []
    PGD(eps=1e-4, steps=9)(tiny_cnn(0), x, y)  # retirements after steps 4 and 8
    assert synced == ["nonzero"] * 2
    synced.clear()
    PGD(eps=1e-4, steps=9).perturb(tiny_cnn(0), x, y)  # crafting: nothing retires
    assert synced == []


def test_pgd_spends_one_forward_per_step_and_judges_only_open_examples() -> None:
    """steps forward+backward passes, the fooled examples retiring every RETIRE_EVERY steps;
    the last iterate is evaluated (without gradient) only on the examples still open."""
    model = tiny_cnn(0)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 5  # misclassified from the start: fooled at the first step
    calls: list[tuple[int, bool]] = []
    model.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0],
                                                             torch.is_grad_enabled())))
    eps = 1e-4  # too small to fool the others
    result = PGD(eps=eps, steps=5, step_size=eps / 2)(model, x, y)
    # after step 4 the three fooled examples retire: steps 5 and the last iterate see 5
    assert calls == [(8, True)] * 4 + [(5, True), (5, False)]
    assert result.queries.tolist() == [4, 4, 4, 6, 6, 6, 6, 6]
    assert result.success.tolist() == [True] * 3 + [False] * 5
