"""Suites: resolution for the model at hand, a randomized toy whose robust accuracy is known in
closed form, diagnostics that catch too few EOT passes, overestimating paper-style attacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.eval import evaluate
from robustact.eval.randomness import judge, stable_eot, stable_samples
from robustact.eval.stats import mcnemar_exact, significantly_more
from robustact.eval.suites import autoattack_specs, canonical_suite, resolve_suite
from robustact.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


class ShatteredLinear(nn.Module):
    """A randomized binary linear classifier whose randomness masks its gradient.

    Logits ``W x + b`` plus ``+-(a / omega) sin(omega v.x + phase)`` with a fresh Gaussian
    direction v and phase per example and pass: the term is tiny in value (at most a / omega),
    so the averaged prediction is the linear one, but large in gradient (a ||v||), so a single
    pass points an attack anywhere; an EOT average of many passes recovers W."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, amplitude: float = 3.0,
                 omega: float = 500.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(b.clone())
        self.amplitude, self.omega = amplitude, omega

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        v = torch.randn_like(flat)
        phase = 2 * math.pi * torch.rand(flat.shape[0], device=x.device)
        wiggle = self.amplitude / self.omega * torch.sin(self.omega * (v * flat).sum(1) + phase)
        return flat @ self.w.T + self.b + torch.stack([wiggle, -wiggle], 1)


def worst_margin(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """(N,) the smallest margin of the noise-free linear classifier over the L-inf ball of
    radius eps intersected with [0, 1]^D, in closed form: coordinate by coordinate the
    perturbation goes to whichever end of its interval lowers the margin."""
    flat = x.flatten(1)
    d = w[y] - w[1 - y]
    margin = (d * flat).sum(1) + (b[y] - b[1 - y])
    lo, hi = (-flat).clamp(min=-eps), (1 - flat).clamp(max=eps)
    return margin + torch.minimum(d * lo, d * hi).sum(1)


def toy_problem(n: int = 60, eps: float = 0.05) -> tuple[ShatteredLinear, torch.Tensor,
                                                          torch.Tensor, float]:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(2, 64, generator=g), torch.zeros(2)
    x = torch.rand(4 * n, 1, 8, 8, generator=g)
    y = (x.flatten(1) @ w.T).argmax(1)
    worst = worst_margin(w, b, x, y, eps)
    clear = worst.abs() > 0.05  # no point within the randomness' reach of the boundary
    x, y, worst = x[clear][:n], y[clear][:n], worst[clear][:n]
    return ShatteredLinear(w, b).eval(), x, y, (worst > 0).float().mean().item()


def test_adaptive_finds_the_closed_form_robust_accuracy_of_a_randomized_model() -> None:
    model, x, y, truth = toy_problem()
    assert 0.15 < truth < 0.7
    report = evaluate(model, (x, y), [], [0.05], suite="adaptive", n_samples=None,
                      probe_size=30)
    suite = report.suite
    assert suite.randomized and suite.eot is not None and suite.eot >= 16
    assert all(s.eot for s in suite.specs)
    robust = report.worst_case(0.05).float().mean().item()
    lo, hi = report.rows()[-1]["ci_low"], report.rows()[-1]["ci_high"]
    assert lo <= truth <= hi, (robust, truth)
    assert abs(robust - truth) <= 2 / len(y)  # and in fact (nearly) exact
    # an attack without EOT overestimates: single passes point nowhere
    plain = evaluate(model, (x, y), ["pgd:steps=20"], [0.05], n_samples=report.n_samples,
                     diagnose=False)
    assert plain.worst_case(0.05).float().mean().item() >= truth + 0.1


def test_diagnostics_fire_on_too_few_eot_passes_and_stay_silent_when_converged() -> None:
    model, x, y, truth = toy_problem()
    few = evaluate(model, (x, y), ["pgd:steps=20,eot=1"], [0.05], n_samples=8, probe_size=60)
    check = next(c for c in few.diagnostics.checks if c.name == "not_converged")
    assert check.fired, check.message
    assert "overestimates robustness" in check.message
    many = evaluate(model, (x, y), ["pgd:steps=20,eot=64"], [0.05], n_samples=8,
                    probe_size=40)
    assert not any(c.fired for c in many.diagnostics.checks), many.diagnostics.summary()
    assert many.worst_case(0.05).float().mean().item() <= truth + 2 / len(y)


def test_resolution_follows_the_model() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    relu = create_model("small_cnn", act_layer="relu").eval()
    suite = resolve_suite("adaptive", relu, x, y)
    assert not suite.randomized and suite.n_samples == 1 and suite.eot is None
    assert [s.label for s in suite.specs] == ["apgd_ce", "apgd_t", "square"]
    assert suite.specs[-1].kwargs["queries"] == 5000
    kwta = create_model("small_cnn", act_layer="kwta", act_kwargs={"ratio": 0.2}).eval()
    suite = resolve_suite("adaptive", kwta, x, y)
    assert suite.bpda and [s.label for s in suite.specs] == [
        "apgd_ce+bpda", "apgd_ce", "apgd_t+bpda", "apgd_t", "square"]
    aa = resolve_suite("autoattack", relu, x, y, norm="l2")
    assert [s.label for s in aa.specs] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert all(s.kwargs["norm"] == "l2" for s in aa.specs)
    rand = resolve_suite("autoattack_rand", relu, x, y)
    assert [(s.name, s.eot) for s in rand.specs] == [("apgd_ce", 20), ("apgd_dlr", 20)]
    with pytest.raises(ConfigError, match="unknown suite 'strong'; valid suites: adaptive"):
        canonical_suite("strong")
    with pytest.raises(ConfigError, match="suite adaptive is defined for norm linf or l2"):
        resolve_suite("adaptive", relu, x, y, norm="l1")


def test_autoattack_budgets_are_the_published_ones() -> None:
    specs = {s.label: s.kwargs for s in autoattack_specs("linf")}
    assert specs["apgd_ce"]["steps"] == 100 and specs["apgd_ce"]["restarts"] == 1
    assert specs["apgd_t"]["n_target_classes"] == 9 and specs["apgd_t"]["steps"] == 100
    assert specs["fab_t"]["targeted"] and specs["fab_t"]["n_target_classes"] == 9
    assert specs["square"]["queries"] == 5000 and specs["square"]["p_init"] == 0.8


def test_judging_twice_counts_flips_and_stable_samples_grows_with_noise() -> None:
    model, x, y, _ = toy_problem(n=40)
    noisy = ShatteredLinear(model.w.detach(), model.b.detach(), amplitude=3.0, omega=0.5)
    verdict = judge(noisy, x, y, 1, True)
    assert verdict.flips > 0  # one pass of a very noisy model: the judgings disagree
    assert (verdict.correct & verdict.broken).sum() == 0
    assert stable_samples(model, x, y) == 8  # the shattered term is invisible in value
    assert stable_samples(noisy, x, y, limit=64) > 8


def test_paper_attacks_beside_a_suite_report_their_overestimate(
        relu_cnn: nn.Module, fmnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = fmnist_test[0][:60], fmnist_test[1][:60]
    report = evaluate(relu_cnn, (x, y), ["fgsm:label=paper_fgsm"], [0.15], suite="autoattack",
                      probe_size=20)
    labels = [o.label for o in report.outcomes]
    assert labels[:4] == ["apgd_ce", "apgd_t", "fab_t", "square"] and labels[-1] == "paper_fgsm"
    paper = report.outcomes[-1]
    assert paper.group == "paper" and paper.attacked.equal(report.clean_correct)
    check = next(c for c in report.diagnostics.checks if c.name == "overestimates")
    over = int((paper.correct & ~report.worst_case(0.15)).sum())
    assert check.details["points"]["paper_fgsm@0.15"] == over
    assert check.fired == significantly_more(over, 0)
    assert check.details["flagged"] == (["paper_fgsm@0.15"] if check.fired else [])
    if check.fired:
        assert f"{over} points it left robust were broken by other attacks" in check.message
        assert "overestimates" not in report.diagnostics.verdict  # not a sign of masking


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    from scipy.stats import binomtest

    for b, c in [(6, 0), (5, 0), (10, 3), (3, 10), (20, 11)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    assert mcnemar_exact(0, 0) == 1.0
    assert significantly_more(6, 0) and not significantly_more(5, 0)
    assert not significantly_more(3, 10)


class NoisyGradient(nn.Module):
    """Logits (0, 0) whatever the input, with the input gradient of the second logit equal to
    ``w + sigma * noise`` (fresh noise per pass): the cross-entropy gradient of one pass is
    ``(w + sigma * noise) / 2``, so two means of n passes agree to cosine
    ``|w|^2 / (|w|^2 + sigma^2 d / n)`` (d = input size) up to a few percent."""

    def __init__(self, w: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.w, self.sigma = nn.Parameter(w, requires_grad=False), sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        slope = (flat * (self.w + self.sigma * torch.randn_like(flat))).sum(1)
        return torch.stack([torch.zeros_like(slope), slope - slope.detach()], 1)


def test_stable_eot_stops_at_the_closed_form_number_of_passes() -> None:
    torch.manual_seed(0)
    d, noise = 256, 10.0  # |w| = 1, sigma^2 d = 10: c(n) = 1 / (1 + 10 / n), 0.8 at n = 40
    w = torch.randn(d)
    model = NoisyGradient(w / w.norm(), math.sqrt(noise / d))
    x, y = torch.rand(40, 1, 16, 16), torch.zeros(40, dtype=torch.long)
    passes, agreement = stable_eot(model, x, y)
    assert passes % 8 == 0 and agreement >= 0.8
    assert passes in (40, 48), passes  # a power of two would have been 64
    assert abs(agreement - 1 / (1 + noise / passes)) < 0.05
