"""Carlini-Wagner L2 against independent statements of it: torchattacks' fixed-constant CW on a
trained model, the closed-form minimal adversarial of a linear model, and the search's
guarantees (a superset of successes at no larger norms than one round)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import fashion_test, fit_on_fashion
from robustact.attacks.cw import CW
from robustact.attacks.losses import margin
from robustact.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

FAR = 100.0  # an eps no perturbation of a [0, 1] image reaches: the projection is a no-op


@pytest.fixture(scope="module")
def fashion() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained briefly on 2000 Fashion-MNIST images; 100 test images it classifies
    correctly (so every success is the attack's doing)."""
    torch.manual_seed(0)
    model = fit_on_fashion(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(),
                                         nn.Linear(64, 10)))
    xt, yt = fashion_test(200)
    with torch.no_grad():
        right = model(xt).argmax(1) == yt
    return model, xt[right][:100], yt[right][:100]


def fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_cw_fixed_constant_agrees_with_torchattacks(fashion, c: float) -> None:
    """search_steps=1 is torchattacks' CW (same c, kappa, steps, lr). Measured: identical
    success rates (7% at c=0.1, 49% at c=1) and mean L2 of the successes (0.0826, 0.5905);
    tolerance 2 points of success rate and 2% of the mean norm."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = fashion
    ours = CW(eps=FAR, c=c, steps=100, lr=0.01, search_steps=1, abort_early=False)(model, x, y)
    adv = torchattacks.CW(model, c=c, kappa=0, steps=100, lr=0.01)(x, y)
    theirs = fooled(model, adv, y)
    their_norms = (adv - x).flatten(1).norm(dim=1)[theirs]
    assert theirs.any() and not theirs.all(), "pick c so that both outcomes occur"
    assert abs(ours.success.float().mean() - theirs.float().mean()) <= 0.02
    ratio = ours.norms[ours.success].mean() / their_norms.mean()
    assert abs(ratio - 1) <= 0.02, ratio


def test_cw_binary_search_finds_more_and_smaller(fashion) -> None:
    """The first round of the search is the fixed-constant run, and later rounds only replace a
    success by a closer one: per example, a superset of successes at norms no larger."""
    model, x, y = fashion
    one = CW(eps=FAR, c=1.0, search_steps=1)
    five = CW(eps=FAR, c=1.0, search_steps=5)
    r1, r5 = one(model, x, y), five(model, x, y)
    n1, n5 = one.last_min_norms, five.last_min_norms
    assert (r5.success | ~r1.success).all(), "the search lost a success of its first round"
    assert (n5[r1.success] <= n1[r1.success] + 1e-6).all()
    assert r5.success.sum() > r1.success.sum() + 20  # 49% -> 95% measured
    # bisecting c below 1 shrinks the minimal norms of the first round's successes: measured,
    # 23 of 49 by more than 2%, the mean by 2.5%
    shrunk = n5[r1.success] < 0.98 * n1[r1.success]
    assert shrunk.sum() >= 10, shrunk.sum()
    assert n5[r1.success].mean() < 0.99 * n1[r1.success].mean()


def test_cw_close_to_closed_form_minimum_on_linear_model() -> None:
    """For a linear model the smallest L2 adversarial of x (label 0) is at distance
    min_k (z_0 - z_k) / ||w_k - w_0||, towards w_k - w_0 (checked to stay inside [0, 1], so the
    box does not bind). CW can never go below it; with a long search it lands within 1.3% above
    it (measured on three seeds; tolerance 2%)."""
    torch.manual_seed(2)
    n = 20
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    y = torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        z = model(x)
        model[1].bias[0] += (z[:, 1:].amax(1) - z[:, 0]).max() + 0.2  # all labelled 0, margin
        z = model(x)
        towards = model[1].weight[1:] - model[1].weight[0]  # (3, 64)
        dist = (z[:, :1] - z[:, 1:]) / towards.norm(dim=1)  # (n, 3)
        exact, k = dist.min(1)
        unit = towards[k] / towards[k].norm(dim=1, keepdim=True)
        optimum = x.flatten(1) + exact[:, None] * unit
    assert optimum.min() > 0 and optimum.max() < 1
    attack = CW(eps=FAR, c=1e-2, steps=200, search_steps=9)
    result = attack(model, x, y)
    found = attack.last_min_norms
    assert result.success.all()
    assert (found >= exact - 1e-5).all(), "below the true minimum: the norms are wrong"
    assert (found <= 1.02 * exact).all(), (found / exact).max()
    # the defaults (5 x 100 steps from c = 1): 0.4% above on average, measured
    default = CW(eps=FAR)
    default(model, x, y)
    assert (default.last_min_norms >= exact - 1e-5).all()
    assert (default.last_min_norms / exact).mean() <= 1.02


def test_cw_results_in_box_and_ball_and_queries(fashion) -> None:
    model, x, y = fashion
    x, y = x[:30], y[:30].clone()
    y[:3] = (y[:3] + 1) % 10  # misclassified from the start: returned unchanged
    eps, steps, rounds = 1.0, 20, 3
    attack = CW(eps=eps, steps=steps, search_steps=rounds, c=0.1)
    result = attack(model, x, y)
    delta = result.x_adv - x
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert torch.equal(result.success, fooled(model, result.x_adv, y))
    assert torch.equal(result.x_adv[:3], x[:3]) and (result.queries[:3] == 2).all()
    assert (result.queries[3:] <= 1 + rounds * steps + 1).all()
    assert (result.queries[3:] > 1 + rounds).all()  # at least one step per round
    assert len(result.loss_trace) == rounds * steps
    # the minimal norms within eps are what the base class judged broken at eps
    within = attack.last_min_norms <= eps
    assert result.success[within].all()
    again = attack(model, x, y)
    assert torch.equal(again.x_adv, result.x_adv), "not deterministic"
    # the training path: projected, no minimal norms collected
    trained = attack.perturb(model, x, y)
    assert (trained - x).flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert attack._min_norms is None
    assert result.params == {"attack": "cw", "eps": eps, "norm": "l2", "c": 0.1, "kappa": 0.0,
                             "steps": steps, "lr": 0.01, "search_steps": rounds,
                             "abort_early": True}


def test_cw_unfooled_examples_return_best_point_within_eps(fashion) -> None:
    """An example CW never fools comes back as its lowest-margin iterate inside the eps-ball,
    not as the clean image (so the judgement at eps sees the attack's best try)."""
    model, x, y = fashion
    x, y = x[:40], y[:40]
    eps = 0.3
    result = CW(eps=eps, c=0.5, steps=30, search_steps=1, abort_early=False)(model, x, y)
    kept = ~result.success
    assert kept.any()
    with torch.no_grad():
        clean_margin = margin(model(x[kept]), y[kept])
        adv_margin = margin(model(result.x_adv[kept]), y[kept])
    assert (result.norms[kept] > 0).all() and (result.norms[kept] <= eps + 1e-6).all()
    assert (adv_margin > clean_margin).all()  # closer to the boundary than x


def test_cw_kappa_demands_confidence(fashion) -> None:
    model, x, y = fashion
    x, y = x[:40], y[:40]
    plain = CW(eps=FAR, c=1.0, search_steps=3)
    sure = CW(eps=FAR, c=1.0, search_steps=3, kappa=5.0)
    plain(model, x, y)
    result = sure(model, x, y)
    # a finite minimal norm means CW's own success: the best other logit leads by > kappa
    both = torch.isfinite(plain.last_min_norms) & torch.isfinite(sure.last_min_norms)
    assert both.sum() >= 10
    with torch.no_grad():
        assert (margin(model(result.x_adv[both]), y[both]) > 5.0 - 1e-3).all()
    assert (sure.last_min_norms[both] > plain.last_min_norms[both]).all()


def test_cw_validation() -> None:
    with pytest.raises(ConfigError, match="norm must be l2, got 'linf'"):
        CW(eps=1.0, norm="linf")
    with pytest.raises(ConfigError, match=r"c \(the initial constant\) must be a number > 0"):
        CW(eps=1.0, c=0)
    with pytest.raises(ConfigError, match="kappa must be a number >= 0"):
        CW(eps=1.0, kappa=-1)
    with pytest.raises(ConfigError, match="lr must be a number > 0"):
        CW(eps=1.0, lr=float("nan"))
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        CW(eps=1.0, steps=0)
    with pytest.raises(ConfigError, match="search_steps must be an integer >= 1"):
        CW(eps=1.0, search_steps=0)
    with pytest.raises(ConfigError, match="abort_early must be true or false"):
        CW(eps=1.0, abort_early="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eps must be a number >= 0"):
        CW(eps=-1.0)
    assert (CW.name, CW.norms, CW.bounded, CW.gradient_free) == ("cw", ("l2",), False, False)
    h = CW(eps=0.5).hyperparameters()
    assert (h["c"], h["kappa"], h["steps"], h["lr"], h["search_steps"], h["abort_early"]) == (
        1.0, 0.0, 100, 0.01, 5, True)
