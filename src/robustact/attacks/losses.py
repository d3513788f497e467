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

TargetedLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def targeted_cross_entropy(logits: torch.Tensor, y: torch.Tensor,
                           target: torch.Tensor) -> torch.Tensor:
    """(B,) minus the cross-entropy of the target class (rises as the target gains mass)."""
    return -F.cross_entropy(logits.float(), target, reduction="none")


def targeted_margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) target logit minus true logit (> 0: the target beats the true class)."""
    logits = logits.float()
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) targeted DLR of Croce & Hein 2020: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``;
    needs at least 4 classes."""
    if logits.shape[1] < 4:
        raise ConfigError("the targeted DLR loss needs at least 4 classes; use loss=ce or margin")
    top = logits.float().sort(dim=1, descending=True).values
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return targeted_margin(logits, y, target) / scale


TARGETED_LOSSES: dict[str, TargetedLossFn] = {
    "ce": targeted_cross_entropy, "margin": targeted_margin, "cw": targeted_margin,
    "dlr": targeted_dlr}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name]


def get_targeted_loss(name: str) -> TargetedLossFn:
    if name not in TARGETED_LOSSES:
        raise ConfigError(f"unknown targeted loss {name!r}; valid names: "
                          f"{', '.join(TARGETED_LOSSES)}")
    return TARGETED_LOSSES[name]


def target_classes(logits: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    """(B,) the ``rank``-th highest-scoring wrong class of each example (rank 1 = the best
    wrong class), as AutoAttack picks the targets of APGD-T and FAB-T."""
    classes = logits.shape[1]
    if not 1 <= rank < classes:
        raise ConfigError(f"target rank must be in 1..{classes - 1}, got {rank}")
    order = logits.argsort(dim=1, descending=True)
    wrong = order[order != y[:, None]].view(logits.shape[0], classes - 1)
    return wrong[:, rank - 1]
