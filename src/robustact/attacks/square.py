"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020, arXiv 1912.00049):
a score-based random search over localized square perturbations, L-inf and L2."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, check_in, subset_queries
from robustact.attacks.losses import margin
from robustact.attacks.registry import ATTACKS
from robustact.errors import ConfigError

_TINY = 1e-12  # keeps L2 normalisations finite

#: (upper end of the rescaled iteration range, divisor of p_init) of the paper's schedule
_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
               (6000, 128), (8000, 256))


def square_p(iteration: int, n_iterations: int, p_init: float) -> float:
    """Fraction p of the image a square covers at ``iteration`` (0-based) of ``n_iterations``.

    The paper's piecewise-constant schedule for 10000 iterations: p_init up to iteration 10, then
    halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000; other budgets are rescaled to
    10000 as in the reference code (``int(iteration / n_iterations * 10000)``).
    """
    it = int(iteration / max(n_iterations, 1) * 10000)
    for end, divisor in _P_SCHEDULE:
        if it <= end:
            return p_init / divisor
    return p_init / 512


def square_side(p: float, n_features: int, channels: int, height: int, width: int) -> int:
    """Side of the square: max(round(sqrt(p * n_features / c)), 1), at most the image side."""
    side = max(round(math.sqrt(p * n_features / channels)), 1)
    return min(side, height, width)


def square_side_l2(p: float, n_features: int, channels: int, height: int, width: int) -> int:
    """Side of the L2 windows: round(sqrt(p * n_features / c)), at least 3 and odd (as the
    reference code), at most the image side."""
    side = max(round(math.sqrt(p * n_features / channels)), 3)
    side += 1 - side % 2
    return min(side, height, width)


def meta_pattern(side: int, *, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(side, side) the paper's L2 "meta-pattern", unit L2 norm: a centred bump on the top
    ``side // 2`` rows and the negated bump on the others (see :func:`_bump`)."""
    pattern = torch.cat([_bump(side // 2, side, device, dtype),
                         -_bump(side - side // 2, side, device, dtype)])
    return pattern / pattern.norm()


def _bump(rows: int, cols: int, device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    """(rows, cols), unit L2 norm: the sum of nested centred rectangles, the k-th (k = 0, 1, ...;
    Chebyshev radius k around (rows // 2, cols // 2)) weighted 1 / (k + 1)^2. So an entry at
    Chebyshev distance d from the centre holds sum_{k=d}^{K-1} 1/(k+1)^2, K = max(rows,
    cols) // 2 + 1."""
    if rows == 0:
        return torch.zeros(0, cols, device=device, dtype=dtype)
    dist_r = (torch.arange(rows, device=device) - rows // 2).abs()
    dist_c = (torch.arange(cols, device=device) - cols // 2).abs()
    dist = torch.maximum(dist_r[:, None], dist_c[None, :])
    radii = max(rows // 2, cols // 2) + 1
    weights = torch.arange(1, radii + 1, device=device, dtype=dtype).pow(-2)
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum of weights[d:]
    bump = tail[dist]
    return bump / bump.norm()


def true_minus_other(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) true logit minus the best other logit; Square minimises it (< 0 = misclassified)."""
    return -margin(logits, y)


@ATTACKS.register()
class Square(Attack):
    """Square Attack, L-inf or L2, on the margin loss (true logit minus best other logit).

    L-inf, per restart: start from vertical stripes (each column of each channel at +eps or
    -eps), then repeat: draw for each example not yet fooled a square window (random position)
    and a sign per channel, set the perturbation inside the window to +-eps, query the model and
    keep the new point if its margin is lower. The square's area is p * n_features / c with p from
    :func:`square_p`. Each example gets its own window (the reference draws one for the batch) and
    signs are redrawn (up to 10 times) when they would leave the window unchanged, as in the
    authors' original code.

    L2 (the paper's section 3.2), per restart: start from a grid of ``min(h, w) // 5``-sided tiles
    (whole tiles only, centred), each holding the :func:`meta_pattern` (transposed at random) times
    a random sign per channel, scaled onto the eps-sphere. Then repeat: draw for each example two
    windows of side :func:`square_side_l2` (p from the same schedule); per channel, the new
    content of the first window is the meta-pattern (random sign, random transpose) plus the old
    content of that window normalised, rescaled so that it carries the perturbation mass of both
    windows plus an equal share of any budget left below eps (after [0, 1] clipping); the second
    window is zeroed (the mass moves from it to the first). The perturbation is rescaled onto the
    eps-sphere and clipped to [0, 1]; the new point is kept if its margin is lower. As in
    AutoAttack, the mass is counted per channel; torchattacks 3.5 counts the two windows over all
    channels together (the same for one channel), and both draw one window pair and transpose
    per batch and iteration, where each example gets its own here.

    Both norms: examples stop being queried once fooled; the run ends when all are.

    Query budget: ``queries`` counts every forward pass spent on an example in one restart,
    including the initialisation (stripes or grid) and, in the first restart, the check of the clean
    prediction (examples misclassified before the attack are returned unchanged and cost 1
    query). So an example spends at most ``restarts * queries`` forwards in ``run``; the
    ``queries`` of the result also counts the base class's final judging pass (+1). The
    reference's ``n_queries=5000`` allows 5001 forwards (initialisation + 5000 squares) besides its
    clean check: one more square than ``queries=5001`` here.

    Args:
        eps: L-inf or L2 radius on the [0, 1] scale.
        norm: "linf" or "l2".
        queries: forward passes per example and restart (>= 2).
        p_init: initial fraction of the image a square covers (AutoAttack's 0.8; the paper
            used 0.05 on ImageNet).
        restarts: independent runs, each on the examples not yet fooled.
    """

    name = "square"
    gradient_free = True
    norms = ("linf", "l2")

    def __init__(
        self, *, eps: float, norm: str = "linf", queries: int = 5000, p_init: float = 0.8,
        restarts: int = 1, batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        if queries < 2:
            raise ConfigError(f"{self.name}: queries must be >= 2 (clean check and "
                              f"initialisation), got {queries}")
        if restarts < 1:
            raise ConfigError(f"{self.name}: restarts must be >= 1, got {restarts}")
        self.p_init = check_in(self.name, "p_init", p_init, "(0, 1]")
        self.queries = int(queries)
        self.restarts = int(restarts)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "queries": self.queries, "p_init": self.p_init,
                "restarts": self.restarts, "loss": "margin"}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"{self.name}: needs images (N, C, H, W), got {tuple(x.shape)}")
        with torch.no_grad():
            logits = model(x)
        fooled = logits.argmax(1) != y
        best = x.clone()
        best_margin = torch.full((x.shape[0],), math.inf, device=x.device)
        for restart in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            budget = self.queries - 1 if restart == 0 else self.queries
            with torch.no_grad():
                adv, adv_fooled, adv_margin = self._single_run(model, x[idx], y[idx], idx, budget)
            take = adv_fooled | (adv_margin < best_margin[idx])
            best[idx[take]] = adv[take]
            best_margin[idx[take]] = adv_margin[take]
            fooled[idx[adv_fooled]] = True
        return best

    def _single_run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, budget: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``budget`` forwards per example (``idx``: positions in the batch): stripes, then
        ``budget - 1`` squares. Returns (best point, fooled, best margin)."""
        x_best = self._init_l2(x) if self.norm == "l2" else self._init_linf(x)
        with subset_queries(model, idx):
            logits = model(x_best)
        margin_best = true_minus_other(logits, y)
        fooled = logits.argmax(1) != y
        n_iter = budget - 1
        for i in range(n_iter):
            active = (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            p = square_p(i, n_iter, self.p_init)
            xa, xb = x[active], x_best[active]
            if self.norm == "l2":
                x_new = self._propose_l2(xa, xb, p)
            else:
                x_new = self._propose_linf(xa, xb, p)
            with subset_queries(model, idx[active]):
                logits = model(x_new)
            new_margin = true_minus_other(logits, y[active])
            better = new_margin < margin_best[active]
            keep = active[better]
            x_best[keep] = x_new[better]
            margin_best[keep] = new_margin[better]
            fooled[keep] = logits.argmax(1)[better] != y[keep]
            self.record_loss(-margin_best)
        return x_best, fooled, margin_best

    # ---- L-inf ----------------------------------------------------------------------------------
    def _init_linf(self, x: torch.Tensor) -> torch.Tensor:
        """Vertical stripes: each column of each channel at +eps or -eps, clipped to [0, 1]."""
        n, c, _, w = x.shape
        stripes = torch.randint(0, 2, (n, c, 1, w), device=x.device).to(x.dtype) * 2 - 1
        return self.project(x, x + self.eps * stripes)

    def _propose_linf(self, x: torch.Tensor, x_best: torch.Tensor, p: float) -> torch.Tensor:
        """x_best with one random square window per example (area fraction ``p``) redrawn."""
        b, c, h, w = x.shape
        s = square_side(p, c * h * w, c, h, w)
        top = torch.randint(0, h - s + 1, (b,), device=x.device)
        left = torch.randint(0, w - s + 1, (b,), device=x.device)
        return self._propose(x, x_best, _window(top, left, s, h, w))

    def _propose(self, x: torch.Tensor, x_best: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """x_best with the perturbation inside each example's window set to +-eps per channel."""
        x_new = self.project(x, torch.where(inside, x + self.eps * _signs(x), x_best))
        redo = torch.arange(x.shape[0], device=x.device)
        for _ in range(10):
            same = (x_new[redo] - x_best[redo]).abs().flatten(1).amax(1) < 1e-7
            redo = redo[same]
            if redo.numel() == 0:
                break
            xr = x[redo]
            x_new[redo] = self.project(
                xr, torch.where(inside[redo], xr + self.eps * _signs(xr), x_best[redo]))
        return x_new

    # ---- L2 -------------------------------------------------------------------------------------
    def _init_l2(self, x: torch.Tensor) -> torch.Tensor:
        """(n, c, h, w) the grid of signed meta-patterns on the eps-sphere, clipped to [0, 1]."""
        n, c, h, w = x.shape
        side = max(min(h, w) // 5, 1)
        top, left = max((h - 5 * side) // 2, 0), max((w - 5 * side) // 2, 0)
        tiles_h, tiles_w = (h - top) // side, (w - left) // side
        pattern = meta_pattern(side, device=x.device, dtype=x.dtype)
        flip = torch.rand(n, 1, tiles_h, tiles_w, 1, 1, device=x.device) < 0.5
        tiles = torch.where(flip, pattern.T, pattern) * _signs_like(x, (tiles_h, tiles_w, 1, 1))
        grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, tiles_h * side, tiles_w * side)
        delta = torch.zeros_like(x)
        delta[:, :, top:top + tiles_h * side, left:left + tiles_w * side] = grid
        return self._onto_sphere(x, delta)

    def _propose_l2(self, x: torch.Tensor, x_best: torch.Tensor, p: float) -> torch.Tensor:
        """x_best with the perturbation mass of a second window moved into a first one (per
        example and channel), on the eps-sphere. Shapes (b, c, h, w)."""
        b, c, h, w = x.shape
        s = square_side_l2(p, c * h * w, c, h, w)
        tops = torch.randint(0, h - s + 1, (2, b), device=x.device)
        lefts = torch.randint(0, w - s + 1, (2, b), device=x.device)
        first, second = _window(tops[0], lefts[0], s, h, w), _window(tops[1], lefts[1], s, h, w)
        delta = x_best - x
        energy = delta.square()
        norm_first = _spatial_sum(energy * first).sqrt()  # (b, c, 1, 1)
        norm_both = _spatial_sum(energy * (first | second)).sqrt()
        spare = (self.eps ** 2 - energy.sum((1, 2, 3), keepdim=True)).clamp_min(0.0)
        content = (_placed_patterns(tops[0], lefts[0], s, h, w, x.dtype) * _signs(x)
                   + delta * first / (norm_first + _TINY))
        content = content * ((spare / c + norm_both ** 2).sqrt()
                             / (_spatial_sum(content.square()).sqrt() + _TINY))
        delta = torch.where(first, content, delta.masked_fill(second, 0.0))
        return self._onto_sphere(x, delta)

    def _onto_sphere(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x + delta rescaled to L2 norm eps, clipped to [0, 1]."""
        norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return (x + self.eps * delta / (norms + _TINY)).clamp(0.0, 1.0)


def _placed_patterns(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """(b, 1, h, w) zeros with the meta-pattern (transposed at random per example) in each
    example's window."""
    b = top.shape[0]
    pattern = meta_pattern(s, device=top.device, dtype=dtype)
    flip = torch.rand(b, 1, 1, device=top.device) < 0.5
    offsets = torch.arange(s, device=top.device)
    rows, cols = top[:, None] + offsets, left[:, None] + offsets  # (b, s)
    placed = torch.zeros(b, 1, h, w, device=top.device, dtype=dtype)
    placed[torch.arange(b, device=top.device)[:, None, None], 0, rows[:, :, None],
           cols[:, None, :]] = torch.where(flip, pattern.T, pattern)
    return placed


def _window(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """(b, 1, h, w) bool: the s x s window at (top, left) (each (b,)) of each example."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    return (((rows >= top[:, None]) & (rows < top[:, None] + s))[:, None, :, None]
            & ((cols >= left[:, None]) & (cols < left[:, None] + s))[:, None, None, :])


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, c, 1, 1)."""
    return t.sum((2, 3), keepdim=True)


def _signs_like(x: torch.Tensor, tail: tuple[int, ...]) -> torch.Tensor:
    """(N, C, *tail) random +-1 in x's dtype."""
    return torch.randint(0, 2, (*x.shape[:2], *tail), device=x.device).to(x.dtype) * 2 - 1


def _signs(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) random +-1, one per example and channel."""
    return _signs_like(x, (1, 1))
