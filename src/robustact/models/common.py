"""Helpers shared by the model files: activation resolution, argument checks, weight init."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.activations import ActLayer, get_act_layer
from robustact.errors import ConfigError

__all__ = [
    "ActLayer", "check_choice", "check_positive", "check_rate", "init_conv_bn", "resolve_act",
]


def resolve_act(act_layer: Any) -> ActLayer:
    """Resolve an ``act_layer`` argument once; call the result at every activation site."""
    return get_act_layer(act_layer)


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
