"""Per-example attack losses (higher = closer to misclassification). Shapes: logits (B, K)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustact.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) cross-entropy of the true label."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true, others.amax(1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) Carlini-Wagner margin: best other logit minus true logit (> 0 = misclassified)."""
    true, other = _true_and_best_other(logits, y)
    return other - true


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) Difference of Logits Ratio of Croce & Hein 2020 (shift- and scale-invariant):
    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``; needs at least 3 classes."""
    if logits.shape[1] < 3:
        raise ConfigError("the DLR loss needs at least 3 classes; use the ce or margin loss")
    true, other = _true_and_best_other(logits, y)
    top = logits.float().sort(dim=1, descending=True).values
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin, "cw": margin, "dlr": dlr}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name]
