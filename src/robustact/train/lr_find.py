"""The learning-rate range test: the training loss while the lr grows, saved as lr_find.json.

Smith 2017, "Cyclical learning rates", as the KAF thesis used it to pick each activation's
one-cycle bounds.

The network trains for ``steps`` batches with the configuration's optimizer, data and
adversarial training while the learning rate grows exponentially from ``start`` to ``end``;
the loss is recorded at every step and smoothed with a bias-corrected moving average. The test
stops early once the smoothed loss exceeds ``diverge`` times its minimum (or is not finite).

Reading the curve: where the loss starts to fall is a one-cycle schedule's lowest lr; where it
falls fastest (``lr_steepest``) and where it bottoms out (``lr_min_loss``) bracket the peak.
The thesis picked its maximum near the plateau/minimum (e.g. 0.08 for the ReLU VGG); the
common rule of thumb takes ``lr_min_loss / 10``. Both are reported, neither is applied: the
test trains a freshly built network that is then thrown away; only the curve is saved
(``lr_find.json``; :func:`robustact.report.figures.write_lr_find_figure` draws it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.device import select_device
from robustact.errors import ConfigError
from robustact.files import write_json
from robustact.train.config import TrainConfig


@dataclass
class RangeTest:
    """The curve of one range test; ``stopped``: "end" or "diverged"."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "end"

    @property
    def lr_min_loss(self) -> float:
        """The lr at the smallest smoothed loss."""
        return self.lrs[min(range(len(self.smoothed)), key=self.smoothed.__getitem__)]

    @property
    def lr_steepest(self) -> float:
        """The lr where the smoothed loss falls fastest per decade of lr, up to its minimum."""
        end = min(range(len(self.smoothed)), key=self.smoothed.__getitem__)
        if end < 1:
            return self.lrs[0]
        logs = [math.log(v) for v in self.lrs[:end + 1]]
        slopes = [(self.smoothed[i + 1] - self.smoothed[i]) / (logs[i + 1] - logs[i])
                  for i in range(end)]
        return self.lrs[min(range(end), key=slopes.__getitem__)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lr_min_loss": self.lr_min_loss,
                "lr_steepest": self.lr_steepest}


def lr_range_test(config: TrainConfig, *, start: float = 1e-5, end: float = 1.0,
                  steps: int = 100, beta: float = 0.9, diverge: float = 4.0) -> RangeTest:
    """Run the range test for ``config`` (its model, data, optimizer, adversarial training,
    gradient clipping and AMP; its schedule and epochs are ignored). Returns the curve."""
    from robustact.train.loop import _adversarial_batch, optimizer_step

    _check_range(start, end, steps, beta, diverge)
    device, dtype, loader, model, optimizer = _setup(config)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is not None)
    attack = config.adversarial.attack() if config.adversarial is not None else None
    model.train()
    result = RangeTest()
    best, average = math.inf, 0.0
    bar = _bar(steps, config.progress)
    batches = _forever(loader)
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if attack is not None:
                x = _adversarial_batch(attack, model, x, y, config.adversarial.fraction)
            loss = F.cross_entropy(model(x), y)
        optimizer_step(config, model, optimizer, scaler, loss)
        value = loss.item()  # one sync per step: the test must see a divergence at once
        result.lrs.append(lr)
        result.losses.append(value)
        if not math.isfinite(value):
            result.smoothed.append(math.inf)
            result.stopped = "diverged"
            break
        average = beta * average + (1 - beta) * value
        smooth = average / (1 - beta ** (i + 1))
        result.smoothed.append(smooth)
        best = min(best, smooth)
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.3g}", loss=f"{smooth:.3f}")
        if smooth > diverge * best:
            result.stopped = "diverged"
            break
    bar.close()
    if not any(math.isfinite(v) for v in result.smoothed):
        raise ConfigError(f"the loss was not finite from the first step (lr {start:g}); "
                          "lower --start-lr")
    return result


def _check_range(start: float, end: float, steps: int, beta: float, diverge: float) -> None:
    if not (0 < start < end and math.isfinite(end)):
        raise ConfigError(f"the range test needs 0 < start < end, got start {start}, end {end}")
    if steps < 2:
        raise ConfigError(f"the range test needs steps >= 2, got {steps}")
    if not 0 <= beta < 1:
        raise ConfigError(f"smoothing beta must be in [0, 1), got {beta}")
    if diverge <= 1:
        raise ConfigError(f"diverge must be > 1 (a factor over the best loss), got {diverge}")


def _setup(config: TrainConfig) -> tuple[torch.device, torch.dtype | None, Any, nn.Module,
                                         torch.optim.Optimizer]:
    """The device, AMP dtype, training batches, fresh network and optimizer of ``config``."""
    from robustact.data import BatchLoader, load_dataset
    from robustact.train.loop import autocast_dtype, build_trainable, make_optimizer

    device = select_device(config.device)
    dtype = autocast_dtype(config, device)
    torch.manual_seed(config.seed)
    train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    if config.train_subset:
        train_set = train_set.subset(config.train_subset)
    loader = BatchLoader(train_set, batch_size=config.batch_size, shuffle=True,
                         augment=config.augment, seed=config.seed, device=device,
                         resize=config.resize)
    model = build_trainable(config, device, lambda: next(iter(loader))[0][:2])
    return device, dtype, loader, model, make_optimizer(config, model)


def write_range_test(result: RangeTest, config: TrainConfig, out: str | Path) -> Path:
    """``lr_find.json`` in ``out`` (the curve, its readings, the configuration); returns its
    path. The figure is :func:`robustact.report.figures.write_lr_find_figure`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / "lr_find.json", {**result.to_dict(), "config": config.to_dict()})


def _forever(loader: Any) -> Any:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, files)
    return tqdm(total=total, unit="step", desc="lr range test", disable=None if progress else True,
                leave=False)
