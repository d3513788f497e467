"""The adaptive suite's pass budget: passes counted as the model sees them, and budgeted attacks
that run only within AutoAttack-rand's passes on the same points."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustact.eval import evaluate
from robustact.eval.budget import max_passes, reference_passes, spent_passes
from robustact.eval.spec import AttackSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    model = tiny()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts right
    return x, y, model


def images_seen(model: nn.Module) -> list[int]:
    seen = [0]
    model.register_forward_hook(lambda m, i, o: seen.__setitem__(0, seen[0] + i[0].shape[0]))
    return seen


@pytest.mark.parametrize("spec", ["apgd_ce:steps=12,eot=3", "square:queries=30,eot=2",
                                  "pgd:steps=7,restarts=2"])
@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_spent_passes_are_the_images_the_model_saw(spec: str, eps: float) -> None:
    """Queries times points times EOT is what the model computed for the attack: every image
    it saw, less the randomness check (two passes of 16 points), the clean judging (one pass
    per point) and the judging of the attack's points; and at most :func:`max_passes`."""
    x, y, model = data()
    seen = images_seen(model)
    report = evaluate(model, (x, y), [spec], [eps], diagnose=False)
    (outcome,) = report.outcomes
    attacked = int(outcome.attacked.sum())
    assert seen[0] - 2 * 16 - len(y) - attacked == pytest.approx(spent_passes(outcome))
    parsed = AttackSpec.parse(spec)
    assert spent_passes(outcome) <= max_passes(parsed.build(eps), parsed.eot, attacked)


def test_budgeted_attacks_run_only_within_autoattack_rands_passes() -> None:
    x, y, model = data()
    specs = [AttackSpec("apgd_ce", {"steps": 10}, eot=2, group="suite"),
             AttackSpec("apgd_ce", {"steps": 10}, eot=4, label="fits", group="budgeted"),
             AttackSpec("square", {"queries": 200_000}, label="too_big", group="budgeted"),
             AttackSpec("square", {"queries": 50}, eot=2, label="last", group="budgeted")]
    report = evaluate(model, (x, y), specs, [0.02], diagnose=False)
    first, fits, too_big, last = report.outcomes
    alive = first.correct
    assert 0 < int(alive.sum()) < len(y)  # the first attack breaks some points, not all
    assert torch.equal(fits.attacked, alive)
    assert "skipped" not in fits.params
    # 200 000 queries on any point cost more than 101 * 20 passes per point: never run
    assert int(too_big.attacked.sum()) == 0
    assert torch.equal(too_big.correct, fits.correct)
    assert "AutoAttack-rand's" in too_big.params["skipped"]
    assert torch.equal(last.attacked, fits.correct)
    assert torch.equal(report.worst_case(0.02), last.correct)
    spent = sum(spent_passes(o) for o in report.outcomes)
    assert spent <= reference_passes(len(y), int(alive.sum()))


def test_the_adaptive_suite_budgets_its_extra_attacks_only_on_randomized_models() -> None:
    from robustact.eval.suites import resolve_suite

    x, y, model = data()
    plain = resolve_suite("adaptive", model, x, y)
    assert {s.group for s in plain.specs} == {"suite"}

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x + 0.3 * torch.randn_like(x))

    torch.manual_seed(0)
    noisy = resolve_suite("adaptive", Noisy().eval(), x, y)
    groups = [(s.label, s.group) for s in noisy.specs]
    assert groups[:2] == [(f"apgd_ce+eot{noisy.specs[0].eot}", "suite"), ("apgd_dlr", "suite")]
    assert all(g == "budgeted" for _, g in groups[2:]) and groups[-1][0].startswith("square")
    first, most = noisy.specs[0].eot, noisy.eot
    assert first is not None and most is not None and first <= most
    if most > first:  # the survivors' APGD-CE through the passes that reach cosine 0.8
        assert groups[2] == (f"apgd_ce+eot{most}", "budgeted")
