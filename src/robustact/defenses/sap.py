"""Stochastic Activation Pruning (Dhillon et al., ICLR 2018; REFERENCE section 4).

Per sample, the activation map ``h`` (all non-batch dims, N entries) defines the distribution
``p_j = |h_j| / sum_k |h_k|``. ``r = round(frac * N)`` indices are drawn from it with
replacement; a unit drawn at least once is kept and scaled by ``1 / q_j`` with
``q_j = 1 - (1 - p_j)^r``, the probability that it is drawn at all; every other unit is set to
0. Hence ``E[SAP(h)] = h`` (inverse propensity weighting). "SAP-100" is ``frac=1.0``.

Conventions (what the paper leaves open, and how the original MXNet operator differs):

- **r** is ``frac * N`` rounded half up, at least 1. The original operator truncates
  (``int(frac * N)``); the two agree for SAP-100 and whenever ``frac * N`` is an integer.
- **p** uses ``|h|`` as in the paper's formula; the original divides ``h`` by ``sum h``, which
  is the same after a ReLU (where the paper applies SAP) and invalid for signed maps.
- **gradient**: the output is ``h * m`` with ``m = 1[drawn] / q`` detached, so gradient flows to
  ``h`` through the kept units (scaled by ``1 / q``) and never through ``p`` or ``q`` (the
  original backward is ``grad * m`` and zero for ``p``).
- **all-zero map**: passes through unchanged (factor 1, also for the gradient), never NaN; the
  original divides by zero. Units with ``h_j = 0`` in a nonzero map are never drawn. Maps must
  be finite (an inf or NaN makes p undefined and the sampler raises).
- **randomness**: the layer is random in train *and* eval mode (a test-time defense, attribute
  ``randomized = True``); every sample of a batch gets its own draws, so a replicated batch
  (:class:`robustact.attacks.EOT`) averages independent draws. Draws use ``generator`` (a
  ``torch.Generator`` on the input's device) or else the global RNG. Only the global RNG is
  restored by ``torch.utils.checkpoint`` (used by EOT for large batches): with a private
  generator a recomputed chunk would draw new masks, so use the global RNG there.
- **sampling is exact**. On the CPU with ``r >= 1024`` the counts are drawn by Poissonisation:
  ``X_j ~ Poisson(lam * p_j)`` independently with ``lam = r - 3 sqrt(r)`` (given their total T,
  X is Multinomial(T, p)), then the remaining ``r - T`` draws come from ``torch.multinomial``;
  rows with T outside ``[r - 6 sqrt(r), r]`` (probability ~0.3%) are redrawn directly. The sum
  is Multinomial(r, p) exactly, at a third of the cost of ``r`` categorical draws (which cost
  ~200 ns each on a CPU). Elsewhere, and for small r, ``torch.multinomial`` draws all r.
- ``method="independent"`` is the re-implementation of Athalye et al. (Obfuscated Gradients):
  each unit is kept independently with probability ``1 - exp(-r p_j)`` and scaled by its
  inverse. It is a *different layer* (independent units, a slightly different keep rate; they
  used r = 2N after conv outputs, ``frac=2``), offered only as an option.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustact.activations.registry import ACTIVATIONS
from robustact.errors import ConfigError

METHODS = ("multinomial", "independent")

# Indices per torch.multinomial call (8 bytes each); larger r is drawn in chunks.
_MAX_INDICES = 1 << 24
# Poissonisation on the CPU from this many draws per row on (below it, draw directly).
_POISSON_MIN_DRAWS = 1024
# lam = r - _SPREAD * sqrt(r); up to 2 * _SPREAD * sqrt(r) remaining draws per row.
_SPREAD = 3.0


def num_draws(frac: float, n: int) -> int:
    """Number of draws r for a map of ``n`` units: ``frac * n`` rounded half up, at least 1."""
    return max(1, math.floor(frac * n + 0.5))


def check_frac(frac: float) -> float:
    """``frac`` as a float, or :class:`ConfigError` unless it is a finite number > 0."""
    if isinstance(frac, bool) or not isinstance(frac, int | float):
        raise ConfigError(f"SAP frac must be a number > 0 (1.0 = SAP-100), got {frac!r}")
    if not (math.isfinite(frac) and frac > 0):
        raise ConfigError(f"SAP frac must be a finite number > 0 (1.0 = SAP-100), got {frac!r}")
    return float(frac)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"SAP method must be multinomial or independent, got {method!r}")
    return method


def _rows(h: torch.Tensor) -> torch.Tensor:
    if h.dim() < 2:
        raise ConfigError(f"SAP needs a batched input (B, ...), got shape {tuple(h.shape)}")
    return h if h.dim() == 2 else h.reshape(h.shape[0], math.prod(h.shape[1:]))


def _magnitudes(rows: torch.Tensor) -> torch.Tensor:
    """``|rows|`` in at least float32 (half precision sums would lose the small units)."""
    a = rows.detach().abs()
    return a if a.dtype in (torch.float32, torch.float64) else a.float()


def _probabilities(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p (B, N) from magnitudes ``a`` and the (B, 1) mask of all-zero rows (where p = 0)."""
    total = a.sum(1, keepdim=True)
    zero = total == 0
    return a / torch.where(zero, 1.0, total), zero


def _keep_probability(p: torch.Tensor, r: int, method: str) -> torch.Tensor:
    if method == "multinomial":
        # 1 - (1 - p)^r, accurate for tiny p (where (1 - p) rounds to 1 in float32)
        return -torch.expm1(r * torch.log1p(-p))
    return -torch.expm1(-r * p)


def sap_keep_probability(h: torch.Tensor, frac: float = 1.0, *,
                         method: str = "multinomial") -> torch.Tensor:
    """The probability that each unit of ``h`` survives SAP: ``1 - (1 - p_j)^r``
    (``"multinomial"``) or ``1 - exp(-r p_j)`` (``"independent"``); 1 in all-zero maps.

    Shapes: h (B, ...); the output has the shape of h (float32 or float64).
    """
    rows = _rows(h)
    r = num_draws(check_frac(frac), rows.shape[1])
    with torch.no_grad():
        p, zero = _probabilities(_magnitudes(rows))
        q = _keep_probability(p, r, check_method(method))
        return torch.where(zero, 1.0, q).reshape(h.shape)


def sap_draw_counts(h: torch.Tensor, frac: float = 1.0, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """How often each unit is drawn in one SAP pass over ``h``: (B, N) int32 counts, each row
    summing to r. The draws of ``sap(h, frac, generator=g)`` are exactly these when ``g``
    is in the same state. All-zero maps draw uniformly (their output is h regardless).

    Shapes: h (B, ...) with N = h[0].numel(); output (B, N).
    """
    rows = _rows(h)
    r = num_draws(check_frac(frac), rows.shape[1])
    with torch.no_grad():
        a = _magnitudes(rows)
        zero = a.sum(1, keepdim=True) == 0
        return multinomial_counts(torch.where(zero, 1.0, a), r, generator=generator)


def multinomial_counts(weights: torch.Tensor, r: int, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Counts of ``r`` draws with replacement per row from the categorical distributions
    proportional to the rows of ``weights`` (B, N), nonnegative with positive row sums; one
    Multinomial(r, w / sum w) sample per row, exactly (see the module docstring).
    Returns (B, N) int32.
    """
    if weights.device.type == "cpu" and r >= _POISSON_MIN_DRAWS:
        return _poissonized_counts(weights, r, generator)
    return _direct_counts(weights, r, generator)


def _direct_counts(weights: torch.Tensor, r: int,
                   generator: torch.Generator | None) -> torch.Tensor:
    batch, n = weights.shape
    counts = torch.zeros(batch, n, dtype=torch.int32, device=weights.device)
    step = max(1, _MAX_INDICES // max(batch, 1))
    for start in range(0, r, step):
        k = min(step, r - start)
        index = torch.multinomial(weights, k, replacement=True, generator=generator)
        counts.scatter_add_(1, index, _ones(counts, batch, k))
    return counts


def _poissonized_counts(weights: torch.Tensor, r: int,
                        generator: torch.Generator | None) -> torch.Tensor:
    # X_j ~ Poisson(lam p_j) independent => given T = sum X, X ~ Multinomial(T, p); adding an
    # independent Multinomial(r - T, p) gives Multinomial(r, p) for every T <= r.
    spread = _SPREAD * math.sqrt(r)
    lam = r - spread
    extra = math.ceil(2 * spread)
    p = weights / weights.sum(1, keepdim=True)
    counts = torch.poisson(p * lam, generator=generator).to(torch.int32)
    missing = r - counts.sum(1, dtype=torch.int64)
    index = torch.multinomial(weights, extra, replacement=True, generator=generator)
    # the first `missing` of `extra` i.i.d. draws are `missing` i.i.d. draws
    take = torch.arange(extra, device=weights.device) < missing.unsqueeze(1)
    counts.scatter_add_(1, index, take.to(torch.int32))
    redo = (missing < 0) | (missing > extra)
    if redo.any():  # rare; the CPU has no host sync to avoid
        rows = redo.nonzero()[:, 0]
        counts[rows] = _direct_counts(weights[rows], r, generator)
    return counts


def _ones(like: torch.Tensor, batch: int, k: int) -> torch.Tensor:
    return torch.ones((), dtype=like.dtype, device=like.device).expand(batch, k)


def sap_factor(h: torch.Tensor, frac: float = 1.0, *, method: str = "multinomial",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of SAP's multiplier ``m`` (no autograd graph): ``1[drawn] / q`` per unit,
    0 for pruned units and 1 in all-zero maps; ``sap(h) = h * m``.

    Shapes: h (B, ...); output (B, N) with N = h[0].numel(), in h's dtype.
    """
    rows = _rows(h)
    r = num_draws(check_frac(frac), rows.shape[1])
    return _factor(rows, r, check_method(method), generator)


def _factor(rows: torch.Tensor, r: int, method: str,
            generator: torch.Generator | None) -> torch.Tensor:
    with torch.no_grad():
        a = _magnitudes(rows)
        p, zero = _probabilities(a)
        q = _keep_probability(p, r, method)
        if method == "multinomial":
            kept = multinomial_counts(torch.where(zero, 1.0, a), r, generator=generator) > 0
        else:
            kept = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) < q
        # 1[kept] / q; a kept unit has q > 0 (the clamp only guards denormal corners), and an
        # unkept unit gives 0 / tiny = 0, never 0 / 0
        factor = kept.to(q.dtype).div_(q.clamp_min(torch.finfo(q.dtype).tiny))
        return factor.masked_fill_(zero, 1.0).to(rows.dtype)


def sap(h: torch.Tensor, frac: float = 1.0, *, method: str = "multinomial",
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Functional SAP: one stochastic pass over ``h`` (see the module docstring).

    Args:
        h: activations (B, ...), e.g. (B, C, H, W) or (B, N); each sample is one map.
        frac: draws per map as a fraction of its N units (1.0 = SAP-100, 0.5 = SAP-50).
        method: ``"multinomial"`` (the paper's, default) or ``"independent"`` (Athalye et al.).
        generator: a ``torch.Generator`` on h's device for reproducible draws (default: global).

    Shapes: the output has the shape and dtype of h.
    """
    rows = _rows(h)
    if rows.numel() == 0:
        return h * 1
    r = num_draws(check_frac(frac), rows.shape[1])
    out = rows * _factor(rows, r, check_method(method), generator)
    return out if rows is h else out.view(h.shape)


class SAP(nn.Module):
    """Stochastic Activation Pruning layer (put it after an activation).

    Args:
        frac: draws per map as a fraction of its units, r = round(frac * N) (1.0 = SAP-100).
        method: ``"multinomial"`` (exact, the paper's) or ``"independent"`` (Athalye et al.'s
            re-implementation: independent keeps with probability 1 - exp(-r p)).
        generator: optional ``torch.Generator`` (on the device of the inputs) for the draws.

    Random in train and eval mode (``randomized = True``). No parameters, no state.
    Shapes: input (B, ...) such as (B, C, H, W) or (B, N); output the same shape.
    """

    randomized = True

    def __init__(self, frac: float = 1.0, *, method: str = "multinomial",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.frac = frac
        self.method = check_method(method)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ConfigError(f"SAP generator must be a torch.Generator, got {generator!r}")
        self.generator = generator

    @property
    def frac(self) -> float:
        return self._frac

    @frac.setter
    def frac(self, value: float) -> None:
        self._frac = check_frac(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sap(x, self._frac, method=self.method, generator=self.generator)

    def extra_repr(self) -> str:
        seeded = ", generator" if self.generator is not None else ""
        return f"frac={self.frac:g}, method={self.method}{seeded}"


# ReLU followed by SAP is an activation, for models built with SAP from the start (``apply_sap``
# inserts SAP into a trained network instead). The bare SAP layer is not registered: it would
# count as an activation, and convert_activations would replace it.
@ACTIVATIONS.register("sap", aliases=("relu_sap",))
class ReLUSAP(SAP):
    """ReLU followed by SAP, ``sap(relu(x))``: the paper's use of SAP as one activation module,
    for building a model with SAP from the start (``act_layer``) rather than post hoc.
    Arguments as :class:`SAP`. Shapes: (B, ...) in and out.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sap(torch.relu(x), self._frac, method=self.method, generator=self.generator)
