"""KAF arithmetic: the functional forms and the autograd kernels for values and gradients.

``kaf`` (fixed, evenly spaced dictionary), ``kaf_general`` (any dictionary and bandwidth) and
``kaf_naive`` (the plain formula, for tests); the module :class:`~robustact.activations.KAF`
and its conventions are in :mod:`robustact.activations.kaf`.

**Memory.** A custom autograd function saves only ``x`` and the small parameters for
backward and recomputes the kernel values there: one activation-sized tensor per KAF, like the
output a ReLU saves, not ``D`` times the activation (a ResNet-20 step keeps ~1.5x the ReLU
network's saved bytes, since a ReLU's saved output doubles as the next convolution's saved
input; the naive formula keeps ~20x). Inputs are processed in chunks of the batch that fit in
the CPU caches; each chunk is a few dozen small tensor ops, so on a CPU shared with other busy
processes ``torch.set_num_threads(1)`` can be much faster than several threads. Arithmetic
is float32 inside (float64 for float64 inputs), with autocast disabled, and the result is cast
back to the input dtype. A backward call computes only the gradients it delivers:
``torch.autograd.grad(loss, x)``, as attacks use it, skips the parameters' (~40% of the work).

**Evenly spaced grid.** For the fixed dictionary the Gaussian factorises around an anchor point
``d_a``: with ``z = x - d_a`` and ``rho = exp(2 gamma Delta z)``, ``k_{a+j}(x) =
exp(-gamma z^2) * exp(-gamma j^2 Delta^2) * rho^j``, so ``KAF(x) = exp(-gamma z^2) *
P(rho, 1/rho)``, a Laurent polynomial evaluated with Horner's rule: two exponentials per
element instead of ``D``. To stay inside the float range, ``z`` is clamped at
``|z| <= sqrt(70 / gamma)`` (float32), where every kernel of the block is below ``exp(-16)``
(so the result differs from the formula by < 1e-7 * max|alpha| there); dictionaries with many
points per kernel width are split into blocks with their own anchors, and a bandwidth too
narrow for the factorisation falls back to the direct sum. ``kaf_free``, whose dictionary need
not stay evenly spaced, always uses the direct sum (D exponentials per element; about 3x the
cost of ``kaf``). The function is differentiable once (no double backward).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from robustact.errors import ConfigError

__all__ = ["GAMMA_RULES", "dictionary_grid", "kaf", "kaf_general", "kaf_naive", "resolve_gamma"]

#: gamma = 1 / (rule * Delta^2) for the named bandwidth rules
GAMMA_RULES = {"thesis": 6.0, "reference": 8.0}

# Elements per chunk (0.5 MB of float32 per chunk tensor): on a 2-core AMD EPYC (2 MB L2 per
# core), 64K-256K elements were equally fast, whole 2M-element tensors ~3x slower.
CHUNK_ELEMENTS = 1 << 17
# dtype of the alpha-gradient moments ``sum g exp(-gamma z^2) rho^j`` on CPUs. Their terms for
# elements far from a kernel fall below float32's normal range; subnormal arithmetic is ~2x
# slower on the AMD EPYC test machine but up to ~100x on Intel cores without flush-to-zero. In
# a ResNet-20 at init 3e-4 of the float32 terms were subnormal, and float64 made the whole
# training step 20% slower (0.98 s vs 0.82 s, 1 thread), hence float32; set torch.float64 here
# if the KAF backward is unexpectedly slow on an Intel CPU.
CPU_MOMENT_DTYPE = torch.float32


# --------------------------------------------------------------------------- dictionary, gamma


def dictionary_grid(D: int, boundary: float, **tensor_kwargs: Any) -> torch.Tensor:
    """The ``D`` dictionary points evenly spaced over ``[-boundary, boundary]``, shape (D,)."""
    _check_grid(D, boundary)
    return torch.linspace(-boundary, boundary, D, **tensor_kwargs)


def resolve_gamma(gamma: str | float, D: int, boundary: float) -> float:
    """The bandwidth as a number: ``"thesis"`` 1/(6 Delta^2), ``"reference"`` 1/(8 Delta^2)."""
    _check_grid(D, boundary)
    if isinstance(gamma, str):
        if gamma not in GAMMA_RULES:
            raise ConfigError(
                f"KAF gamma must be 'thesis', 'reference' or a number > 0, got {gamma!r}"
            )
        delta = 2.0 * boundary / (D - 1)
        return 1.0 / (GAMMA_RULES[gamma] * delta * delta)
    if isinstance(gamma, bool) or not isinstance(gamma, int | float):
        raise ConfigError(f"KAF gamma must be 'thesis', 'reference' or a number > 0, got {gamma!r}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"KAF gamma must be a finite number > 0, got {gamma!r}")
    return float(gamma)


def _check_grid(D: int, boundary: float) -> None:
    if isinstance(D, bool) or not isinstance(D, int) or D < 2:
        raise ConfigError(f"KAF dictionary size D must be an integer >= 2, got {D!r}")
    if (isinstance(boundary, bool) or not isinstance(boundary, int | float)
            or not math.isfinite(boundary) or boundary <= 0):
        raise ConfigError(f"KAF boundary must be a number > 0 (e.g. 3.0), got {boundary!r}")


# --------------------------------------------------------------------------- shared helpers


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_bcs(x: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B, C, S) with S the product of the trailing dims (1 for (B, C))."""
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _chunks(n: int, per_sample: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _no_autocast(device: torch.device) -> Any:
    return torch.autocast(device_type=device.type, enabled=False)


def _records_graph(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record this call (else the forward runs without a Function)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _grad_nodes(*tensors: torch.Tensor) -> tuple[Any, ...]:
    """The autograd node that receives each tensor's gradient (None if it needs none)."""
    nodes = []
    for t in tensors:
        if not t.requires_grad:
            nodes.append(None)
        elif t.grad_fn is not None:
            nodes.append(t.grad_fn)
        else:  # a leaf (a parameter): its gradient accumulator
            with torch.enable_grad():
                nodes.append(t.view_as(t).grad_fn.next_functions[0][0])
    return tuple(nodes)


def _needed(ctx: Any, nodes: tuple[Any, ...]) -> list[bool]:
    """Which input gradients this backward call must compute. ``needs_input_grad`` is fixed at
    forward time; ``torch.autograd.grad(loss, x)`` (an attack) does not use the parameters'
    gradients, and the engine says so: skipping them saves ~40% of the backward."""
    needed = []
    for need, node in zip(ctx.needs_input_grad, nodes, strict=False):
        if need and node is not None:
            try:
                need = bool(torch._C._will_engine_execute_node(node))
            except (AttributeError, RuntimeError):  # private API: keep the safe answer
                need = True
        needed.append(need)
    return needed


def _check_input(x: torch.Tensor, alpha: torch.Tensor) -> None:
    if x.dim() < 2:
        raise ConfigError(f"KAF needs a batched input (B, C, ...), got shape {tuple(x.shape)}")
    if alpha.dim() != 2 or alpha.shape[0] != x.shape[1]:
        raise ConfigError(
            f"KAF has coefficients for {alpha.shape[0]} channels but the input has "
            f"{x.shape[1]} (shape {tuple(x.shape)}); use one KAF module per activation site"
        )


# --------------------------------------------------------------------------- evenly spaced grid

# exp(-70) and D * |alpha| * exp(70) are far inside float32's range (1e-38 .. 3e38)
_EXP_LIMIT = {torch.float32: 70.0, torch.float64: 600.0}
# a block's kernels must be below exp(-16) at the clamp (float32 resolution is ~exp(-16.6))
_CLAMP_MARGIN = 4.0


@dataclass(frozen=True)
class _Block:
    """Dictionary points ``start .. start + size - 1`` expanded around the point ``anchor``."""

    start: int
    size: int
    anchor: int

    @property
    def upper(self) -> int:  # points anchor .. end (powers rho^0 .. rho^(upper - 1))
        return self.start + self.size - self.anchor

    @property
    def lower(self) -> int:  # points below the anchor (powers rho^-1 .. rho^-lower)
        return self.anchor - self.start


@dataclass(frozen=True)
class _GridPlan:
    D: int
    boundary: float
    gamma: float
    delta: float
    zmax: float  # |x - d_anchor| is clamped to this
    blocks: tuple[_Block, ...]


@functools.lru_cache(maxsize=64)
def _grid_plan(D: int, boundary: float, gamma: float, dtype: torch.dtype) -> _GridPlan | None:
    """How to evaluate the grid KAF in ``dtype``, or None when the direct sum must be used."""
    delta = 2.0 * boundary / (D - 1)
    limit = _EXP_LIMIT[dtype]
    # a block of n points reaches n // 2 steps from its anchor; its kernels must have decayed
    # below exp(-_CLAMP_MARGIN^2) at the clamp |z| = sqrt(limit / gamma)
    reach = int((math.sqrt(limit) - _CLAMP_MARGIN) / (math.sqrt(gamma) * delta))
    max_size = min(D, 2 * reach + 1)
    if max_size < 4:
        return None  # kernels too narrow for the factorisation to pay off (or to be accurate)
    count = -(-D // max_size)
    base, extra = divmod(D, count)
    blocks, start = [], 0
    for b in range(count):
        size = base + (1 if b < extra else 0)
        blocks.append(_Block(start, size, start + size // 2))
        start += size
    return _GridPlan(D, boundary, gamma, delta, math.sqrt(limit / gamma), tuple(blocks))


def _block_tables(alpha: torch.Tensor, block: _Block, plan: _GridPlan) -> tuple[torch.Tensor, ...]:
    """Per-channel polynomial coefficients of one block, (n, 2, C): [upper, lower] by power.

    Upper: ``c_j = alpha[a + j] e_j`` (power rho^j); lower: ``c_m = alpha[a - 1 - m] e_(m+1)``
    (power rho^-m, times an extra 1/rho), ``e_j = exp(-gamma j^2 Delta^2)``. Also returns e and
    the offsets ``x - d_i = z + shift`` (upper: ``-j Delta``; lower: ``(m + 1) Delta``).
    """
    n, a = block.upper, block.anchor
    g0 = plan.gamma * plan.delta * plan.delta
    j = torch.arange(n + 1, device=alpha.device, dtype=alpha.dtype)
    e = torch.exp(-g0 * j * j)  # e_0 .. e_n
    coef = alpha.new_zeros(n, 2, alpha.shape[0])
    coef[:, 0] = (alpha[:, a:a + n] * e[:n]).T
    low = block.lower
    if low:
        coef[:low, 1] = (alpha[:, block.start:a].flip(1) * e[1:low + 1]).T
    shift = torch.stack((-plan.delta * j[:n], plan.delta * (j[:n] + 1)), dim=1)  # (n, 2)
    return coef, e, shift


class _Buffers:
    """Scratch tensors reused by the chunks of one call: for these sizes, allocating (and
    first touching) fresh memory per chunk costs as much as the arithmetic."""

    def __init__(self, like: torch.Tensor) -> None:
        self.like = like
        self.store: dict[tuple[str, tuple[int, ...], torch.dtype | None], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...],
            dtype: torch.dtype | None = None) -> torch.Tensor:
        key = (name, shape, dtype)
        if key not in self.store:
            self.store[key] = self.like.new_empty(shape, dtype=dtype)
        return self.store[key]


def _horner(coef: torch.Tensor, var: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``sum_j coef[j] * var ** j`` by Horner's rule into ``out`` (the broadcast shape of
    coef[0] and var); coef (n, ...)."""
    n = coef.shape[0]
    if n == 1:
        return out.copy_(coef[0].expand_as(out))
    torch.addcmul(coef[n - 2], coef[n - 1], var, out=out)
    for j in range(n - 3, -1, -1):
        torch.addcmul(coef[j], out, var, out=out)
    return out


_ZERO = {dtype: torch.zeros((), dtype=dtype) for dtype in (torch.float32, torch.float64)}


def _anchor_terms(
    x: torch.Tensor, block: _Block, plan: _GridPlan, bufs: _Buffers
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z = clamp(x - d_anchor), exp(-gamma z^2), and var = (rho, 1/rho) stacked: (2, *x.shape)."""
    shape = tuple(x.shape)
    z = torch.sub(x, -plan.boundary + block.anchor * plan.delta, out=bufs.get("z", shape))
    z.clamp_(-plan.zmax, plan.zmax)
    kh = torch.addcmul(_ZERO[z.dtype], z, z, value=-plan.gamma, out=bufs.get("kh", shape)).exp_()
    var = bufs.get("var", (2, *shape))
    torch.mul(z, 2.0 * plan.gamma * plan.delta, out=var[0]).exp_()
    torch.reciprocal(var[0], out=var[1])
    return z, kh, var


def _grid_forward(x: torch.Tensor, alpha: torch.Tensor, plan: _GridPlan) -> torch.Tensor:
    """KAF of x (B, C, S) with alpha (C, D) on the grid ``plan``; both in the compute dtype."""
    out = torch.empty_like(x)
    bufs = _Buffers(x)
    tables = [_block_tables(alpha, blk, plan)[0][:, :, None, :, None] for blk in plan.blocks]
    for rows in _chunks(x.shape[0], x.shape[1] * x.shape[2]):
        xc, oc = x[rows], out[rows]
        shape = tuple(xc.shape)
        for i, (blk, coef) in enumerate(zip(plan.blocks, tables, strict=True)):
            _, kh, var = _anchor_terms(xc, blk, plan, bufs)
            acc = _horner(coef, var, bufs.get("acc", (2, *shape)))
            val = torch.addcmul(acc[0], acc[1], var[1], out=bufs.get("val", shape))
            if i == 0:
                torch.mul(val, kh, out=oc)
            else:
                oc.addcmul_(val, kh)
    return out


def _grid_backward(
    x: torch.Tensor, alpha: torch.Tensor, g: torch.Tensor, plan: _GridPlan, need_x: bool,
    need_alpha: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. x (B, C, S) and alpha (C, D) given the output gradient g (B, C, S).

    ``dKAF/dx = -2 gamma sum_i alpha_i (x - d_i) k_i`` (per element, by Horner as in forward)
    and ``dL/dalpha_i = sum g k_i`` over batch and positions: moments ``sum g exp(-gamma z^2)
    rho^j`` of each block, scaled by ``e_j`` afterwards, in ``CPU_MOMENT_DTYPE`` on CPUs.
    """
    grad_x = torch.empty_like(x) if need_x else None
    mom_dtype = CPU_MOMENT_DTYPE if x.device.type == "cpu" else x.dtype
    mom_dtype = torch.promote_types(mom_dtype, x.dtype)
    moments = [x.new_zeros((blk.upper, 2, x.shape[1]), dtype=mom_dtype) for blk in plan.blocks]
    bufs = _Buffers(x)
    tables = [_backward_tables(alpha, blk, plan) for blk in plan.blocks]
    for rows in _chunks(x.shape[0], x.shape[1] * x.shape[2]):
        xc, gc = x[rows], g[rows]
        total = bufs.get("total", tuple(xc.shape))
        for i, (blk, (both, _), mom) in enumerate(zip(plan.blocks, tables, moments, strict=True)):
            z, kh, var = _anchor_terms(xc, blk, plan, bufs)
            if need_x:
                _add_x_share(both, z, kh, var, total, first=i == 0, bufs=bufs)
            if need_alpha:
                mom += _alpha_moments(gc, kh, var, blk.upper, mom_dtype, bufs)
        if need_x:
            assert grad_x is not None
            torch.mul(total, gc, out=grad_x[rows])
    grad_alpha = _grad_alpha(alpha, plan, tables, moments) if need_alpha else None
    return grad_x, grad_alpha


def _backward_tables(
    alpha: torch.Tensor, block: _Block, plan: _GridPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's Horner tables for dKAF/dx and its ``e_j``: (n, 2 [P: sum c rho^j, Q: sum c
    shift rho^j], 2 [upper, lower], 1, C, 1), times the factor -2 gamma of dKAF/dx."""
    coef, e, shift = _block_tables(alpha, block, plan)
    both = torch.stack((coef, coef * shift[:, :, None]), dim=1) * (-2.0 * plan.gamma)
    return both[:, :, :, None, :, None], e


def _add_x_share(both: torch.Tensor, z: torch.Tensor, kh: torch.Tensor, var: torch.Tensor,
                 total: torch.Tensor, *, first: bool, bufs: _Buffers) -> None:
    """Add one block's share of dKAF/dx to ``total`` (set it for the first block)."""
    shape = tuple(z.shape)
    acc = _horner(both, var, bufs.get("acc", (2, 2, *shape)))
    p = torch.addcmul(acc[0, 0], acc[0, 1], var[1], out=bufs.get("p", shape))
    q = torch.addcmul(acc[1, 0], acc[1, 1], var[1], out=bufs.get("q", shape))
    q.addcmul_(p, z)  # dKAF/dx / exp(-gamma z^2), this block's share
    if first:
        torch.mul(q, kh, out=total)
    else:
        total.addcmul_(q, kh)


def _alpha_moments(gc: torch.Tensor, kh: torch.Tensor, var: torch.Tensor, n: int,
                   mom_dtype: torch.dtype, bufs: _Buffers) -> torch.Tensor:
    """One chunk's moments ``sum g exp(-gamma z^2) rho^(+-j)``, j < n: (n, 2 [upper, lower], C)
    in ``mom_dtype`` (a scratch buffer, valid until the next call)."""
    shape = tuple(gc.shape)
    w = bufs.get("w", (2, *shape), mom_dtype)
    if mom_dtype == var.dtype:
        ratio = var
        torch.mul(gc, kh, out=w[0])
    else:
        ratio = bufs.get("ratio", (2, *shape), mom_dtype)
        ratio.copy_(var)
        w[0].copy_(torch.mul(gc, kh, out=bufs.get("gk", shape)))
    torch.mul(w[0], ratio[1], out=w[1])
    sums = bufs.get("sums", (n, 2, shape[1]), mom_dtype)
    for j in range(n):
        torch.sum(w, dim=(1, 3), out=sums[j])
        if j + 1 < n:
            w.mul_(ratio)
    return sums


def _grad_alpha(alpha: torch.Tensor, plan: _GridPlan,
                tables: list[tuple[torch.Tensor, torch.Tensor]],
                moments: list[torch.Tensor]) -> torch.Tensor:
    """dL/dalpha (C, D) from the blocks' moments, each scaled by its ``e_j``."""
    grad_alpha = torch.zeros_like(alpha)
    for blk, (_, e), mom in zip(plan.blocks, tables, moments, strict=True):
        a, n, low = blk.anchor, blk.upper, blk.lower
        mom = mom.to(alpha.dtype)
        grad_alpha[:, a:a + n] += (mom[:, 0] * e[:n, None]).T
        if low:
            grad_alpha[:, blk.start:a] += (mom[:low, 1] * e[1:low + 1, None]).T.flip(1)
    return grad_alpha


def _grid_value(x: torch.Tensor, alpha: torch.Tensor, plan: _GridPlan) -> torch.Tensor:
    dtype = _compute_dtype(x, alpha)
    with _no_autocast(x.device):
        out = _grid_forward(_as_bcs(x).to(dtype), alpha.to(dtype), plan)
    return out.view(x.shape).to(x.dtype)


class _GridKAF(torch.autograd.Function):
    """KAF on the fixed evenly spaced dictionary; saves only x and alpha for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, plan: _GridPlan) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        ctx.plan = plan
        ctx.nodes = _grad_nodes(x, alpha)
        return _grid_value(x, alpha, plan)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, alpha = ctx.saved_tensors
        dtype = _compute_dtype(x, alpha)
        need_x, need_alpha = _needed(ctx, ctx.nodes)
        with _no_autocast(x.device):
            gx, ga = _grid_backward(
                _as_bcs(x).to(dtype), alpha.to(dtype), _as_bcs(grad_out).to(dtype), ctx.plan,
                need_x, need_alpha,
            )
        gx = None if gx is None else gx.view(x.shape).to(x.dtype)
        ga = None if ga is None else ga.to(alpha.dtype)
        return gx, ga, None


# --------------------------------------------------------------------------- direct sum

# sqrt(gamma) |x - d_i| is clamped where exp(-gamma (x - d_i)^2) = exp(-limit): the kernel is
# then negligible, and neither subnormal numbers (slow on CPUs) nor inf * 0 can appear.
_DIRECT_EXP_LIMIT = {torch.float32: 40.0, torch.float64: 600.0}


def _general_columns(
    alpha: torch.Tensor, dictionary: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-point views (D, C, 1) of alpha and of the scaled dictionary ``sqrt(gamma) d``, and
    ``sqrt(gamma)`` as (C, 1) or (1, 1). With ``u = sqrt(gamma) x`` each kernel is
    ``exp(-(u - sqrt(gamma) d_i)^2)``: one multiply per element and point fewer."""
    C, D = alpha.shape
    root = gamma.reshape(-1, 1).sqrt()  # NaN for gamma < 0: a broken layer should show
    a_cols = alpha.T.contiguous()[:, :, None]
    d_cols = (dictionary.expand(C, D) * root).T.contiguous()[:, :, None]
    return a_cols, d_cols, root


def _kernel(u: torch.Tensor, d: torch.Tensor, bufs: _Buffers) -> tuple[torch.Tensor, torch.Tensor]:
    """t = clamp(u - d) and exp(-t^2), in scratch buffers (u, d scaled by sqrt(gamma))."""
    shape = tuple(u.shape)
    t = torch.sub(u, d, out=bufs.get("t", shape))
    limit = math.sqrt(_DIRECT_EXP_LIMIT[u.dtype])
    t.clamp_(-limit, limit)
    k = torch.addcmul(_ZERO[t.dtype], t, t, value=-1.0, out=bufs.get("k", shape)).exp_()
    return t, k


def _general_forward(
    x: torch.Tensor, alpha: torch.Tensor, dictionary: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """Direct sum over the D kernels; x (B, C, S), alpha (C, D), dictionary (C, D) or (D,),
    gamma (C,) or ()."""
    out = torch.empty_like(x)
    a_cols, d_cols, root = _general_columns(alpha, dictionary, gamma)
    bufs = _Buffers(x)
    for rows in _chunks(x.shape[0], x.shape[1] * x.shape[2]):
        u = torch.mul(x[rows], root, out=bufs.get("u", tuple(x[rows].shape)))
        oc = out[rows]
        for i in range(alpha.shape[1]):
            _, k = _kernel(u, d_cols[i], bufs)
            if i == 0:
                torch.mul(k, a_cols[i], out=oc)
            else:
                oc.addcmul_(k, a_cols[i])
    return out


def _general_backward(
    x: torch.Tensor, alpha: torch.Tensor, dictionary: torch.Tensor, gamma: torch.Tensor,
    g: torch.Tensor, needs: Sequence[bool],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients w.r.t. (x, alpha, dictionary, gamma) of the direct sum, None where not needed.

    ``dk_i/dx = -2 gamma (x - d_i) k_i``, ``dk_i/dd_i = 2 gamma (x - d_i) k_i``,
    ``dk_i/dgamma = -(x - d_i)^2 k_i``; with ``t = sqrt(gamma) (x - d_i)`` these are
    ``-2 sqrt(gamma) t k``, ``2 sqrt(gamma) t k`` and ``-t^2 k / gamma``.
    """
    need_x, need_a, need_d, need_g = needs
    C, D = alpha.shape
    a_cols, d_cols, root = _general_columns(alpha, dictionary, gamma)
    coef_x = -2.0 * root * a_cols  # (D, C, 1)
    grad_x = torch.empty_like(x) if need_x else None
    sums = x.new_zeros(3, D, C)  # sum g k, sum g t k, sum g t^2 k per point and channel
    bufs = _Buffers(x)
    for rows in _chunks(x.shape[0], x.shape[1] * x.shape[2]):
        gc = g[rows]
        u = torch.mul(x[rows], root, out=bufs.get("u", tuple(gc.shape)))
        part = bufs.get("part", (3, D, C)).zero_()
        for i in range(D):
            t, gk = _kernel(u, d_cols[i], bufs)
            gk.mul_(gc)
            if need_a:
                torch.sum(gk, dim=(0, 2), out=part[0, i])
            if not (need_x or need_d or need_g):
                continue
            gtk = gk.mul_(t)
            if need_x:
                assert grad_x is not None
                if i == 0:
                    torch.mul(gtk, coef_x[i], out=grad_x[rows])
                else:
                    grad_x[rows].addcmul_(gtk, coef_x[i])
            if need_d:
                torch.sum(gtk, dim=(0, 2), out=part[1, i])
            if need_g:
                torch.sum(gtk.mul_(t), dim=(0, 2), out=part[2, i])
        sums += part
    grad_a = sums[0].T.contiguous() if need_a else None
    grad_d = grad_g = None
    if need_d:
        grad_d = 2.0 * root * alpha * sums[1].T
        if dictionary.dim() == 1:
            grad_d = grad_d.sum(0)
    if need_g:
        grad_g = -(alpha * sums[2].T).sum(1) / root.reshape(-1) ** 2
        if gamma.numel() != C or gamma.dim() == 0:
            grad_g = grad_g.sum()
        grad_g = grad_g.reshape(gamma.shape)
    return grad_x, grad_a, grad_d, grad_g


def _general_value(x: torch.Tensor, alpha: torch.Tensor, dictionary: torch.Tensor,
                   gamma: torch.Tensor) -> torch.Tensor:
    dtype = _compute_dtype(x, alpha, dictionary, gamma)
    with _no_autocast(x.device):
        out = _general_forward(_as_bcs(x).to(dtype), alpha.to(dtype), dictionary.to(dtype),
                               gamma.to(dtype))
    return out.view(x.shape).to(x.dtype)


class _GeneralKAF(torch.autograd.Function):
    """KAF with any dictionary (per channel or shared) and bandwidth; saves only the inputs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, dictionary: torch.Tensor,
                gamma: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha, dictionary, gamma)
        ctx.nodes = _grad_nodes(x, alpha, dictionary, gamma)
        return _general_value(x, alpha, dictionary, gamma)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, alpha, dictionary, gamma = ctx.saved_tensors
        dtype = _compute_dtype(x, alpha, dictionary, gamma)
        with _no_autocast(x.device):
            grads = _general_backward(
                _as_bcs(x).to(dtype), alpha.to(dtype), dictionary.to(dtype), gamma.to(dtype),
                _as_bcs(grad_out).to(dtype), _needed(ctx, ctx.nodes),
            )
        gx, ga, gd, gg = grads
        return (None if gx is None else gx.view(x.shape).to(x.dtype),
                None if ga is None else ga.to(alpha.dtype),
                None if gd is None else gd.to(dictionary.dtype),
                None if gg is None else gg.to(gamma.dtype))


# --------------------------------------------------------------------------- functional API


def kaf(
    x: torch.Tensor, alpha: torch.Tensor, *, boundary: float = 3.0, gamma: str | float = "thesis"
) -> torch.Tensor:
    """KAF with the fixed dictionary of ``D = alpha.shape[1]`` points on [-boundary, boundary].

    Shapes: x (B, C, ...) (e.g. (B, C, H, W), (B, C, L) or (B, N)), alpha (C, D); output the
    shape and dtype of x. Differentiable w.r.t. x and alpha.
    """
    _check_input(x, alpha)
    D = alpha.shape[1]
    value = resolve_gamma(gamma, D, boundary)
    plan = _grid_plan(D, float(boundary), value, _compute_dtype(x, alpha))
    if plan is None:
        dtype = _compute_dtype(x, alpha)
        grid = dictionary_grid(D, boundary, device=alpha.device, dtype=dtype)
        return kaf_general(x, alpha, grid, torch.tensor(value, dtype=dtype, device=alpha.device))
    if not _records_graph(x, alpha):
        return _grid_value(x, alpha, plan)
    return _GridKAF.apply(x, alpha, plan)


def kaf_general(
    x: torch.Tensor, alpha: torch.Tensor, dictionary: torch.Tensor, gamma: torch.Tensor | float
) -> torch.Tensor:
    """KAF with any dictionary and bandwidth, computed as the direct sum over the D kernels.

    Shapes: x (B, C, ...), alpha (C, D), dictionary (C, D) (per channel) or (D,) (shared),
    gamma (C,) (per channel), () or a float; output the shape and dtype of x. Differentiable
    w.r.t. all tensor arguments (``kaf_free`` trains all four).
    """
    _check_input(x, alpha)
    if not isinstance(gamma, torch.Tensor):
        gamma = alpha.new_tensor(float(gamma))
    C, D = alpha.shape
    if dictionary.shape not in ((D,), (C, D)):
        raise ConfigError(f"KAF dictionary must have shape ({D},) or ({C}, {D}), "
                          f"got {tuple(dictionary.shape)}")
    if gamma.shape not in ((), (1,), (C,)):
        raise ConfigError(f"KAF gamma must be a number or have shape ({C},), "
                          f"got {tuple(gamma.shape)}")
    if not _records_graph(x, alpha, dictionary, gamma):
        return _general_value(x, alpha, dictionary, gamma)
    return _GeneralKAF.apply(x, alpha, dictionary, gamma)


def kaf_naive(
    x: torch.Tensor, alpha: torch.Tensor, dictionary: torch.Tensor, gamma: torch.Tensor | float
) -> torch.Tensor:
    """The formula with plain autograd, materialising the (B, C, ..., D) kernel tensor.

    For tests and benchmarks only: it keeps D times the activation's memory alive for backward.
    Shapes as in :func:`kaf_general`.
    """
    _check_input(x, alpha)
    C, D = alpha.shape
    extra = (1,) * (x.dim() - 2)
    d = dictionary.reshape(C, *extra, D) if dictionary.dim() == 2 else dictionary
    g = gamma.reshape(-1, *extra, 1) if isinstance(gamma, torch.Tensor) and gamma.dim() else gamma
    kernel = torch.exp(-g * (x.unsqueeze(-1) - d) ** 2)
    return (kernel * alpha.reshape(C, *extra, D)).sum(-1)
