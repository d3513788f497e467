"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020, arXiv 1912.00049):
a score-based random search over localized square perturbations. L-inf only."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, subset_queries
from robustact.attacks.losses import margin
from robustact.errors import ConfigError

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


def true_minus_other(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) true logit minus the best other logit; Square minimises it (< 0 = misclassified)."""
    return -margin(logits, y)


class Square(Attack):
    """Square Attack, L-inf, on the margin loss (true logit minus best other logit).

    Per restart: start from vertical stripes (each column of each channel at +eps or -eps), then
    repeat: draw for each example not yet fooled a square window (random position) and a sign
    per channel, set the perturbation inside the window to +-eps, query the model and keep the
    new point if its margin is lower. The square's area is p * n_features / c with p from
    :func:`square_p`. Each example gets its own window (the reference draws one for the batch) and
    signs are redrawn (up to 10 times) when they would leave the window unchanged, as in the
    authors' original code. Examples stop being queried once fooled; the run ends when all are.

    Query budget: ``queries`` counts every forward pass spent on an example in one restart,
    including the stripes initialisation and, in the first restart, the check of the clean
    prediction (examples misclassified before the attack are returned unchanged and cost 1
    query). So an example spends at most ``restarts * queries`` forwards in ``run``; the
    ``queries`` of the result also counts the base class's final judging pass (+1). The
    reference's ``n_queries=5000`` allows 5001 forwards (stripes + 5000 squares) besides its clean
    check: one more square than ``queries=5001`` here.

    Args:
        eps: L-inf radius on the [0, 1] scale.
        queries: forward passes per example and restart (>= 2).
        p_init: initial fraction of the image a square covers (AutoAttack's 0.8; the paper
            used 0.05 on ImageNet).
        restarts: independent runs, each on the examples not yet fooled.
    """

    name = "square"
    gradient_free = True
    norms = ("linf",)

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
        if not 0 < p_init <= 1:
            raise ConfigError(f"{self.name}: p_init must be in (0, 1], got {p_init}")
        self.queries = int(queries)
        self.p_init = float(p_init)
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
        n, c, h, w = x.shape
        stripes = torch.randint(0, 2, (n, c, 1, w), device=x.device).to(x.dtype) * 2 - 1
        x_best = self.project(x, x + self.eps * stripes)
        with subset_queries(model, idx):
            logits = model(x_best)
        margin_best = true_minus_other(logits, y)
        fooled = logits.argmax(1) != y
        n_iter = budget - 1
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for i in range(n_iter):
            active = (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            s = square_side(square_p(i, n_iter, self.p_init), c * h * w, c, h, w)
            xa, xb = x[active], x_best[active]
            top = torch.randint(0, h - s + 1, (active.numel(),), device=x.device)
            left = torch.randint(0, w - s + 1, (active.numel(),), device=x.device)
            inside = (((rows >= top[:, None]) & (rows < top[:, None] + s))[:, None, :, None]
                      & ((cols >= left[:, None]) & (cols < left[:, None] + s))[:, None, None, :])
            x_new = self._propose(xa, xb, inside)
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


def _signs(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) random +-1, one per example and channel."""
    return torch.randint(0, 2, (*x.shape[:2], 1, 1), device=x.device).to(x.dtype) * 2 - 1
