"""The SAP layer against closed-form statements of Dhillon et al. (ICLR 2018), section 3.

For a map h with p_j = |h_j| / sum|h| and r draws, unit j survives with probability
q_j = 1 - (1 - p_j)^r and is then scaled by 1 / q_j, so SAP(h)_j has mean h_j and variance
h_j^2 (1 - q_j) / q_j. Monte-Carlo checks replicate one map over n rows of a batch (each row gets
its own draws) and allow 5 standard errors of the estimate: for the mean of SAP(h)_j,
sqrt(h_j^2 (1 - q_j) / q_j / n); for a keep rate, the binomial sqrt(q_j (1 - q_j) / n). With a
fixed seed the tests are deterministic; a 5-SE bound fails by chance with probability ~6e-7 per
unit under a correct implementation.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from robustact.defenses import (
    SAP,
    num_draws,
    sap,
    sap_draw_counts,
    sap_factor,
    sap_keep_probability,
)
from robustact.errors import ConfigError

SE = 5.0  # standard errors allowed by the Monte-Carlo checks
# the module (robustact.defenses.sap is the function of the same name)
sap_module = importlib.import_module("robustact.defenses.sap")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _map(n: int, seed: int = 0, zeros: int = 3) -> torch.Tensor:
    """One signed map of n units with ``zeros`` exact zeros and a wide range of magnitudes."""
    g = _gen(seed)
    h = torch.randn(n, generator=g) * torch.rand(n, generator=g) * 3
    h[:zeros] = 0
    return h


def _replicate(h: torch.Tensor, rows: int) -> torch.Tensor:
    return h.unsqueeze(0).expand(rows, -1).contiguous()


def test_closed_form_keep_probability() -> None:
    h = torch.tensor([[0.0, 1.0, 3.0]])
    q = sap_keep_probability(h, 2 / 3)  # r = 2, p = (0, 1/4, 3/4)
    assert torch.allclose(q, torch.tensor([[0.0, 1 - 0.75**2, 1 - 0.25**2]]))
    q_ind = sap_keep_probability(h, 2 / 3, method="independent")
    assert torch.allclose(q_ind, torch.tensor([[0.0, 1 - math.exp(-0.5), 1 - math.exp(-1.5)]]))
    assert torch.equal(sap_keep_probability(torch.zeros(2, 3), 1.0), torch.ones(2, 3))


@pytest.mark.parametrize(("n", "frac", "rows"), [(24, 0.5, 20000), (1500, 1.0, 1500)])
def test_unbiased(n: int, frac: float, rows: int) -> None:
    # (1500, 1.0) has r = 1500 draws: the CPU's Poissonised sampler; (24, 0.5) draws directly
    h = _map(n)
    out = sap(_replicate(h, rows), frac, generator=_gen(1))
    q = sap_keep_probability(h.unsqueeze(0), frac)[0].double()
    se = (h.double() ** 2 * (1 - q) / q.clamp_min(1e-300) / rows).sqrt()
    err = (out.double().mean(0) - h.double()).abs()
    assert torch.all(err <= SE * se + 1e-6), (err / se).max()
    assert torch.all(out[:, h == 0] == 0)


@pytest.mark.parametrize(("n", "frac", "rows"), [(24, 0.5, 20000), (1500, 1.0, 1500)])
def test_keep_rate_matches_closed_form(n: int, frac: float, rows: int) -> None:
    h = _map(n, seed=2)
    kept = sap(_replicate(h, rows), frac, generator=_gen(3)) != 0
    q = sap_keep_probability(h.unsqueeze(0), frac)[0].double()
    rate = kept.double().mean(0)
    se = (q * (1 - q) / rows).sqrt()
    assert torch.all((rate - q).abs() <= SE * se + 1e-12), ((rate - q).abs() / se).max()


def test_kept_units_are_scaled_by_inverse_keep_probability() -> None:
    h = _replicate(_map(30, seed=4), 50)
    out = sap(h, 0.3, generator=_gen(5))
    q = sap_keep_probability(h, 0.3)
    kept = out != 0
    assert torch.allclose(out[kept], (h / q)[kept], rtol=1e-6)


@pytest.mark.parametrize(("n", "frac"), [(24, 0.5), (10, 0.04), (2000, 1.0), (300, 7.0)])
def test_exactly_r_draws(n: int, frac: float) -> None:
    h = _replicate(_map(n, seed=6), 64)
    counts = sap_draw_counts(h, frac, generator=_gen(7))
    r = num_draws(frac, n)
    assert counts.shape == (64, n)
    assert torch.all(counts.sum(1) == r)
    assert torch.all(counts[:, :3] == 0)  # the zero units are never drawn


def test_draw_counts_are_the_layers_draws() -> None:
    h = _replicate(_map(2000, seed=8), 8)
    counts = sap_draw_counts(h, 1.0, generator=_gen(9))
    factor = sap_factor(h, 1.0, generator=_gen(9))
    assert torch.equal(factor > 0, counts > 0)


def test_chunked_and_redrawn_rows_still_draw_exactly_r(monkeypatch: pytest.MonkeyPatch) -> None:
    h = _replicate(_map(1200, seed=10), 16)
    monkeypatch.setattr(sap_module, "_MAX_INDICES", 1000)  # direct draws in chunks of 62/row
    monkeypatch.setattr(sap_module, "_SPREAD", 0.05)  # most rows fall outside the window
    counts = sap_draw_counts(h, 1.0, generator=_gen(11))
    assert torch.all(counts.sum(1) == 1200)
    monkeypatch.setattr(sap_module, "_POISSON_MIN_DRAWS", 10**9)  # the direct path only
    assert torch.all(sap_draw_counts(h, 0.9, generator=_gen(11)).sum(1) == 1080)


def test_poissonised_counts_have_multinomial_moments() -> None:
    # mean r p_j and variance r p_j (1 - p_j) per unit, 5 standard errors
    rows, n = 1500, 1200
    h = _map(n, seed=12).abs()
    counts = sap_draw_counts(_replicate(h, rows), 1.0, generator=_gen(13)).double()
    p = (h / h.sum()).double()
    mean, var = n * p, n * p * (1 - p)
    assert torch.all((counts.mean(0) - mean).abs() <= SE * (var / rows).sqrt() + 1e-12)
    # the sample variance's standard error for Poisson-like counts: sqrt((m4 - var^2) / rows)
    m4 = var * (1 + 3 * var)  # fourth central moment of a Poisson(var) count, close enough
    err = (counts.var(0) - var).abs()
    assert torch.all(err <= SE * ((m4 - var**2) / rows).sqrt() + 1e-9)


def test_large_frac_approaches_identity() -> None:
    g = _gen(14)
    h = (torch.rand(4, 3, 5, 5, generator=g) * 0.9 + 0.1) * torch.randn(4, 3, 5, 5,
                                                                         generator=g).sign()
    out = sap(h, 1000.0, generator=_gen(15))  # r = 75000: every unit is drawn, q = 1
    assert torch.allclose(out, h, rtol=1e-5, atol=0)
    deviation = {frac: ((sap(h, frac, generator=_gen(16)) - h).abs() / h.abs()).max().item()
                 for frac in (0.5, 5.0, 1000.0)}
    assert deviation[1000.0] < 1e-5 < deviation[5.0] < deviation[0.5]


@pytest.mark.parametrize("method", ["multinomial", "independent"])
def test_all_zero_maps_pass_through(method: str) -> None:
    h = torch.zeros(3, 4, 5, 5, requires_grad=True)
    out = sap(h, 1.0, method=method)
    assert torch.equal(out, torch.zeros_like(out))
    w = torch.randn_like(out)
    (out * w).sum().backward()
    assert torch.equal(h.grad, w)  # the identity, also for the gradient

    mixed = torch.relu(torch.randn(6, 2, 4, 4, generator=_gen(17)))
    mixed[[0, 3]] = 0
    out = sap(mixed, 0.5, method=method, generator=_gen(18))
    assert torch.isfinite(out).all()
    assert torch.equal(out[[0, 3]], torch.zeros(2, 2, 4, 4))
    assert (out[[1, 2, 4, 5]] != 0).any()


def test_half_precision_and_shapes() -> None:
    h = torch.relu(torch.randn(5, 7, generator=_gen(19))).to(torch.bfloat16)
    out = sap(h, 1.0, generator=_gen(20))
    assert out.dtype == torch.bfloat16 and out.shape == h.shape and torch.isfinite(out).all()
    assert sap(torch.zeros(0, 3, 2, 2), 1.0).shape == (0, 3, 2, 2)
    with pytest.raises(ConfigError, match="batched"):
        sap(torch.ones(5), 1.0)


def test_gradient_flows_only_through_kept_units() -> None:
    h = torch.relu(torch.randn(4, 3, 6, 6, generator=_gen(21))).requires_grad_()
    w = torch.randn(4, 3, 6, 6, generator=_gen(22))
    (sap(h, 0.2, generator=_gen(23)) * w).sum().backward()
    factor = sap_factor(h.detach(), 0.2, generator=_gen(23)).view_as(h)  # the same draws
    # autograd of h * m with m a constant: no gradient through p or q
    assert torch.allclose(h.grad, w * factor)
    assert torch.all(h.grad[factor == 0] == 0)
    assert (factor == 0).any() and (factor > 1).any()


def test_generator_makes_draws_reproducible() -> None:
    h = torch.relu(torch.randn(8, 50, generator=_gen(24)))
    for method in ("multinomial", "independent"):
        a = sap(h, 0.5, method=method, generator=_gen(25))
        b = sap(h, 0.5, method=method, generator=_gen(25))
        c = sap(h, 0.5, method=method, generator=_gen(26))
        assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(27)
    a = sap(h, 0.5)
    torch.manual_seed(27)
    assert torch.equal(a, sap(h, 0.5))


def test_independent_method_keep_rate() -> None:
    rows = 20000
    h = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0])  # p = (1/2, 1/4, 1/8, 1/8, 0); frac 0.4: r = 2
    x = _replicate(h, rows)
    q_ind = 1 - torch.exp(-2 * h.double() / h.sum())
    q_mult = 1 - (1 - h.double() / h.sum()) ** 2
    for method, q in (("independent", q_ind), ("multinomial", q_mult)):
        rate = (sap(x, 0.4, method=method, generator=_gen(28)) != 0).double().mean(0)
        se = (q * (1 - q) / rows).sqrt()
        assert torch.all((rate - q).abs() <= SE * se + 1e-12), method
    # the two layers differ: unit 0 survives with 0.75 (multinomial) vs 0.63 (independent)
    assert (q_mult[0] - q_ind[0]) > 20 * (0.25 / rows) ** 0.5


def test_num_draws_rounds_half_up_and_keeps_one() -> None:
    assert num_draws(1.0, 16384) == 16384
    assert num_draws(0.5, 3) == 2
    assert num_draws(0.1, 24) == 2
    assert num_draws(1e-6, 10) == 1
    assert num_draws(2.0, 10) == 20


def test_layer() -> None:
    layer = SAP(0.5)
    assert layer.randomized is True
    assert repr(layer) == "SAP(frac=0.5, method=multinomial)"
    assert "generator" in repr(SAP(generator=_gen(0)))
    layer.eval()
    x = torch.relu(torch.randn(4, 8, 5, 5, generator=_gen(29)))
    assert not torch.equal(layer(x), layer(x))  # random in eval mode
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    seeded = SAP(0.5, generator=_gen(30))
    assert torch.equal(seeded(x), sap(x, 0.5, generator=_gen(30)))
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError, match="frac"):
            SAP(bad)
    with pytest.raises(ConfigError, match="method"):
        SAP(method="bernoulli")
    with pytest.raises(ConfigError, match="frac"):
        layer.frac = 0.0


def test_eot_pgd_lowers_sap_accuracy_more_than_single_sample_pgd(relu_cnn, fmnist_test,
                                                                 one_thread) -> None:
    """The adaptive attack that broke SAP (Athalye et al. 2018): on a Fashion-MNIST small_cnn
    with SAP-100 after every ReLU, PGD-5 at eps 0.1 from 16-sample Monte-Carlo gradients (EOT)
    leaves fewer of 200 test points robust than PGD-5 from single-sample gradients; predictions
    are averaged over 8 passes for both. Measured on one thread with attack seeds 0, 1, 2:
    single 38.0 / 38.0 / 38.5%, EOT 34.5 / 33.5 / 34.0% (clean 80.5%)."""
    import copy

    from robustact.defenses import apply_sap
    from robustact.eval import evaluate

    defended = apply_sap(copy.deepcopy(relu_cnn), 1.0)
    report = evaluate(defended, fmnist_test, ["pgd:steps=5,label=single",
                                              "pgd:steps=5,eot=16,label=eot"],
                      [0.1], n_samples=8, sequential=False, diagnose=False)
    acc = {r["attack"]: r["robust_accuracy"] for r in report.rows()}
    assert acc["clean"] > 0.7
    assert acc["eot"] <= acc["single"] - 0.02, acc
