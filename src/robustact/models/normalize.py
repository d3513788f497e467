"""Per-channel input normalization as the first module of every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustact.errors import ConfigError

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5


def _channel_values(name: str, values: Sequence[float] | None, default: float, channels: int):
    if values is None:
        return [default] * channels
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(
            f"Normalize: {name} has {len(values)} values but the model has {channels} input "
            f"channels; give {channels} values (or one for all channels)"
        )
    return values


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; inputs are images in [0, 1].

    Args:
        mean, std: one value per channel (or a single value for all); None -> 0.5 for every
            channel, which maps [0, 1] onto [-1, 1].
        num_channels: C, the number of input channels.

    Shapes: input (B, C, H, W), output the same. ``mean``/``std`` are buffers of shape
    (1, C, 1, 1), saved in the state dict so a checkpoint carries its normalization.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_channels: int = 3,
    ) -> None:
        super().__init__()
        mean_values = _channel_values("mean", mean, DEFAULT_MEAN, num_channels)
        std_values = _channel_values("std", std, DEFAULT_STD, num_channels)
        if any(s <= 0 for s in std_values):
            raise ConfigError(f"Normalize: every std must be > 0, got {std_values}")
        self.register_buffer("mean", torch.tensor(mean_values).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_values).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"
