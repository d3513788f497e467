"""Helpers shared by the model files: activation resolution, argument checks, weight init."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import robustact.defenses  # noqa: F401  registers the SAP activation
from robustact.activations import ActLayer, get_act_layer
from robustact.errors import ConfigError
from robustact.models.normalize import Normalize

__all__ = [
    "ActLayer", "act_and_normalize", "check_choice", "check_model_args", "check_positive",
    "check_rate", "init_conv_bn", "resolve_act",
]


def resolve_act(act_layer: Any) -> ActLayer:
    """Resolve an ``act_layer`` argument once; call the result at every activation site."""
    return get_act_layer(act_layer)


def act_and_normalize(act_layer: Any, mean: Sequence[float] | None, std: Sequence[float] | None,
                      in_channels: int) -> tuple[ActLayer, Normalize]:
    """What every model builds from its shared arguments: the resolved activation factory and
    the input :class:`Normalize` (the model's first module)."""
    return resolve_act(act_layer), Normalize(mean, std, in_channels)


def check_model_args(model: str, num_classes: int, in_channels: int, *,
                     dropout: float | None = None, input_size: int | None = None,
                     min_input_size: int = 1, reason: str = "") -> None:
    """Check the arguments models share, in this order: positive class and channel counts (and
    ``input_size``), a dropout rate in [0, 1), and ``input_size >= min_input_size`` (what the
    model's poolings need; ``reason`` says why, in the message)."""
    sizes = {} if input_size is None else {"input_size": input_size}
    check_positive(model, num_classes=num_classes, in_channels=in_channels, **sizes)
    if dropout is not None:
        check_rate(model, dropout=dropout)
    if input_size is not None and input_size < min_input_size:
        why = f" ({reason})" if reason else ""
        raise ConfigError(
            f"{model}: input_size must be >= {min_input_size}{why}, got {input_size}"
        )


def check_positive(model: str, **values: int) -> None:
    """Raise :class:`ConfigError` unless every value is a positive int (``num_classes=10``)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{model}: {name} must be a positive integer, got {value!r}")


def check_choice(model: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{model}: {name} must be one of {', '.join(choices)}, got {value!r}")


def check_rate(model: str, **values: float) -> None:
    """Raise :class:`ConfigError` unless every dropout rate is in [0, 1)."""
    for name, value in values.items():
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"{model}: {name} must be in [0, 1), got {value!r}")


def init_conv_bn(model: nn.Module) -> None:
    """He (fan_out) init for convolutions, weight 1 / bias 0 for BatchNorm (as torchvision)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# "symmetric": padding 1 on every side (TRADES / RobustBench WideResNet and PreActResNet).
# "same": DeepMind's fixed padding (left/top 0, right/bottom 1) before a stride-2 3x3 conv, as
# their WideResNet and PreActResNet (RobustBench's DMWideResNet, DMPreActResNet).
PADDINGS = ("symmetric", "same")


def explicit_padding(padding: str, stride: int) -> tuple[int, int, int, int] | None:
    """The F.pad amounts a 3x3 conv of ``stride`` needs under ``padding`` ("same": the conv
    itself then pads nothing), or None for "symmetric" (the conv pads 1)."""
    if padding != "same":
        return None
    return (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)


def pad_input(x: torch.Tensor, pad: tuple[int, int, int, int] | None) -> torch.Tensor:
    """``x`` padded by :func:`explicit_padding`'s amounts (unchanged for None)."""
    return x if pad is None else F.pad(x, pad)


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor of ``(name, tensor)`` pairs holding NaN or
    inf (weights of a diverged training), or None."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
