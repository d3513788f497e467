"""Learning-rate schedules as plain functions of fractional epoch (resume needs no state)."""

from __future__ import annotations

import bisect
import math

from robustact.train.config import TrainConfig


def lr_at(config: TrainConfig, t: float) -> float:
    """Learning rate at fractional epoch ``t`` in [0, epochs) (e.g. 3.5 = mid fourth epoch).

    ``constant``, ``step`` (x gamma every step_size epochs), ``multistep`` (x gamma at each
    milestone), ``cosine`` (to 0 at the end) and ``onecycle`` (linear 0 -> lr at
    ``peak_at * epochs`` -> 0, the cyclic schedule of fast adversarial training). A linear warm-up
    over ``warmup_epochs`` multiplies any of them.
    """
    base = config.lr
    total = config.epochs
    kind = config.schedule
    if kind == "constant":
        lr = base
    elif kind == "step":
        lr = base * config.gamma ** math.floor(t / config.step_size)
    elif kind == "multistep":
        lr = base * config.gamma ** bisect.bisect_right(sorted(config.milestones), t)
    elif kind == "cosine":
        lr = 0.5 * base * (1.0 + math.cos(math.pi * min(t / total, 1.0)))
    else:  # onecycle
        peak = config.peak_at * total
        lr = base * (t / peak if t < peak else max(0.0, (total - t) / (total - peak)))
    if config.warmup_epochs > 0 and t < config.warmup_epochs:
        lr *= t / config.warmup_epochs
    return lr
