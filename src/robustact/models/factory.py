"""Build a registered model by name: :func:`create_model` and its argument checks."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from robustact.activations import get_act_layer
from robustact.errors import ConfigError
from robustact.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_torchvision_weights
from robustact.models.registry import MODELS, ModelCtor
from robustact.models.weights import resolve_weights

PRETRAINED_MODELS = ("resnet18", "alexnet")
EXTRA_ARGS = ("act_kwargs", "pretrained")


def model_arguments(name: str) -> list[str]:
    """The keyword arguments ``create_model(name, ...)`` accepts."""
    params = inspect.signature(MODELS.get(name)).parameters
    return [*params, *EXTRA_ARGS]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create_model("resnet18", act_layer="kwta", act_kwargs=...)``.

    Keyword arguments whose value is None are dropped (unset CLI flags keep the defaults).
    ``act_kwargs`` (a dict) goes to ``get_act_layer`` with ``act_layer``. ``pretrained``
    (a ``.pth`` path, a published name fetched by ``robustact weights fetch`` such as
    ``resnet18-imagenet``, or a state dict in torchvision format; resnet18 with
    stem='imagenet' and alexnet only) builds the model with ImageNet mean/std unless given,
    then loads the weights; the load report is kept as ``model.pretrained_report``.
    Raises UnknownNameError for an unknown model, ConfigError for a bad argument.
    """
    key = MODELS.resolve(name)
    ctor = MODELS.get(key)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    pretrained = kwargs.pop("pretrained", None)
    act_kwargs = kwargs.pop("act_kwargs", None)
    _check_arguments(key, kwargs)
    if act_kwargs:
        kwargs["act_layer"] = _act_with_kwargs(key, kwargs, act_kwargs)
    if pretrained is not None and pretrained is not False:
        _check_pretrained(key, kwargs)
        if isinstance(pretrained, str | os.PathLike):
            pretrained = resolve_weights(pretrained)  # a path, or a fetched published name
        kwargs.setdefault("mean", IMAGENET_MEAN)
        kwargs.setdefault("std", IMAGENET_STD)
    model = _build(key, ctor, kwargs)
    if pretrained is not None and pretrained is not False:
        model.pretrained_report = load_torchvision_weights(model, pretrained)
    return model


def _check_arguments(key: str, kwargs: Mapping[str, Any]) -> None:
    valid = model_arguments(key)
    for arg in kwargs:
        if arg not in valid:
            raise ConfigError(
                f"model {key!r} has no argument {arg!r}; valid arguments: {', '.join(valid)}"
            )


def _act_with_kwargs(key: str, kwargs: Mapping[str, Any], act_kwargs: Any) -> Any:
    if not isinstance(act_kwargs, Mapping):
        raise ConfigError(f"model {key!r}: act_kwargs must be a dict, got {act_kwargs!r}")
    default = inspect.signature(MODELS.get(key)).parameters["act_layer"].default
    return get_act_layer(kwargs.get("act_layer", default), **act_kwargs)


def _check_pretrained(key: str, kwargs: Mapping[str, Any]) -> None:
    if key not in PRETRAINED_MODELS:
        raise ConfigError(
            f"model {key!r} has no torchvision weights; pretrained works with "
            f"{', '.join(PRETRAINED_MODELS)} only"
        )
    if kwargs.get("in_channels", 3) != 3:
        raise ConfigError(f"model {key!r}: pretrained ImageNet weights need in_channels=3")
    if key == "resnet18" and kwargs.get("stem", "cifar") != "imagenet":
        raise ConfigError("resnet18: pretrained torchvision weights need stem='imagenet'")


def _build(key: str, ctor: ModelCtor, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return ctor(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {key!r}: invalid argument ({exc})") from exc


__all__ = ["PRETRAINED_MODELS", "create_model", "model_arguments"]
