"""The model registry: every model class or builder registers itself where it is defined.

    @MODELS.register("resnet18")
    class ResNet18(nn.Module): ...

:mod:`robustact.models` imports every model module, so importing the package registers them all;
:func:`robustact.models.create_model` builds one by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robustact.registry import Registry

ModelCtor = Callable[..., nn.Module]

MODELS: Registry[ModelCtor] = Registry("model")


def list_models() -> list[str]:
    """Registered model names."""
    return MODELS.names()


__all__ = ["MODELS", "ModelCtor", "list_models"]
