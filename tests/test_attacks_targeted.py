"""Targeted PGD / APGD, APGD-T against torchattacks, target choice, L1 projection, option errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustact.attacks import APGD, APGDT, PGD, create_attack
from robustact.attacks.base import QueryCounter, project, project_l1, subset_queries
from robustact.attacks.losses import target_classes, targeted_dlr
from robustact.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_target_classes_are_the_ranked_wrong_classes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 10)
    y = torch.randint(0, 10, (50,))
    for rank in (1, 2, 9):
        got = target_classes(logits, y, rank)
        for i in range(50):  # brute force: sort, drop the label, take the rank-th
            order = [int(c) for c in logits[i].argsort(descending=True) if int(c) != int(y[i])]
            assert int(got[i]) == order[rank - 1]
    with pytest.raises(ConfigError, match="target rank must be in 1..9"):
        target_classes(logits, y, 10)


def test_targeted_dlr_closed_form() -> None:
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) with y = 0, t = 2
    expected = -(5.0 - 1.0) / (5.0 - (1.0 + 0.0) / 2)
    got = targeted_dlr(logits, torch.tensor([0]), torch.tensor([2]))
    assert got.item() == pytest.approx(expected)


def test_targeted_pgd_reaches_its_target(relu_cnn: nn.Module,
                                         fmnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    with torch.no_grad():
        clean = relu_cnn(x)
    keep = clean.argmax(1) == y
    x, y, clean = x[keep], y[keep], clean[keep]
    target = target_classes(clean, y, 1)
    # one target, the best wrong class: the points the attack breaks land on it
    result = PGD(eps=0.1, steps=40, targeted=True, n_target_classes=1, loss="ce")(relu_cnn, x, y)
    with torch.no_grad():
        pred = relu_cnn(result.x_adv).argmax(1)
    broken = result.success
    assert broken.float().mean().item() >= 0.3
    hit = (pred[broken] == target[broken]).float().mean().item()
    assert hit >= 0.9, f"only {hit:.0%} of the broken points reached the target"
    assert (result.norms <= 0.1 + 1e-6).all()


def test_apgd_t_matches_torchattacks(relu_cnn: nn.Module,
                                     fmnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    x, y = fmnist_test[0][:100], fmnist_test[1][:100]
    eps = 0.06
    ours = APGDT(eps=eps, steps=20, n_target_classes=9)(relu_cnn, x, y)
    theirs = torchattacks.APGDT(relu_cnn, norm="Linf", eps=eps, steps=20, n_restarts=1,
                                n_classes=10, seed=0)(x, y)
    with torch.no_grad():
        acc_theirs = (relu_cnn(theirs).argmax(1) == y).float().mean().item()
    acc_ours = ours.robust_accuracy
    untargeted = APGD(eps=eps, steps=20)(relu_cnn, x, y).robust_accuracy
    assert 0.05 < acc_theirs < 0.9  # the comparison is informative at this eps
    assert abs(acc_ours - acc_theirs) <= 0.06, (acc_ours, acc_theirs)
    assert acc_ours <= untargeted + 0.02  # nine targets are at least as strong as APGD-CE
    assert (ours.norms <= eps + 1e-6).all()


def test_targeted_loss_trace_follows_first_target_and_queries_add_up() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6)).eval()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 6, (8,))
    result = APGD(eps=0.01, steps=5, targeted=True, n_target_classes=3)(model, x, y)
    assert len(result.loss_trace) == 5
    # per example: 1 clean check + up to 3 targets x (1 restart check + 6 gradients) + judge
    assert (result.queries >= 2).all() and (result.queries <= 1 + 3 * 7 + 1).all()


def test_nested_subset_queries_charge_the_batch_positions() -> None:
    counter = QueryCounter(nn.Identity(), 6, torch.device("cpu"))
    with subset_queries(counter, torch.tensor([1, 3, 5])):
        with subset_queries(counter, torch.tensor([0, 2])):  # positions 1 and 5 of the batch
            counter(torch.zeros(2, 1))
        counter(torch.zeros(3, 1))
    assert counter.counts.tolist() == [0, 2, 0, 1, 0, 2]


def l1_projection_by_bisection(v: torch.Tensor, eps: float) -> torch.Tensor:
    """The L1-ball projection from its optimality condition: soft-threshold at the theta whose
    result has norm eps, found by bisection (independent of the sort-based formula)."""
    if v.abs().sum() <= eps:
        return v.clone()
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if (v.abs() - mid).clamp_min(0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return v.sign() * (v.abs() - hi).clamp_min(0)


def test_l1_projection_matches_bisection_and_stays_in_the_box() -> None:
    torch.manual_seed(0)
    delta = torch.randn(20, 3, 5, 5, dtype=torch.float64)
    for eps in (0.5, 4.0, 1e3):
        got = project_l1(delta, eps)
        for i in range(20):
            ref = l1_projection_by_bisection(delta[i].flatten(), eps)
            assert torch.allclose(got[i].flatten(), ref, atol=1e-9)
    x = torch.rand(20, 3, 5, 5, dtype=torch.float64)
    out = project(x, x + delta, 2.0, "l1")
    assert out.min() >= 0 and out.max() <= 1
    assert ((out - x).flatten(1).abs().sum(1) <= 2.0 + 1e-9).all()


def test_unknown_and_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="attack 'apgd_t' has no option 'targets'; valid "
                                          "options: eps, norm, steps"):
        create_attack("apgd_t", eps=0.1, targets=3)
    with pytest.raises(ConfigError, match="targeted DLR loss needs at least 4 classes"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        x = torch.rand(2, 1, 2, 2)
        APGDT(eps=0.1, steps=2)(model, x, model(x).argmax(1))
