"""Swap the activation modules of any ``nn.Module`` for another activation."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.activations.registry import ACTIVATIONS, ActLayer, get_act_layer
from robustact.errors import ConfigError

# Hidden-layer nonlinearities of torch.nn. Sigmoid/Softmax are left alone: in modern networks
# they are gates or output layers, not the activation a defense replaces.
TORCH_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Softplus, nn.Tanh, nn.Hardtanh,
)


def activation_types() -> tuple[type[nn.Module], ...]:
    """Module classes treated as activations: torch's and every class in the registry."""
    registered = tuple(v for v in (ACTIVATIONS.get(n) for n in ACTIVATIONS.names())
                       if isinstance(v, type) and issubclass(v, nn.Module))
    return tuple(dict.fromkeys(TORCH_ACTIVATIONS + registered))


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, activation_types())


def convert_activations(
    model: nn.Module, act: str | ActLayer, *, strict: bool = True, **kwargs: Any
) -> nn.Module:
    """Replace every activation module of ``model`` (in place) by a new ``act`` module.

    ``act`` is a registry name (``"kwta"``, with ``kwargs`` such as ``ratio=0.1``) or a factory.
    Each replaced site gets its own new module (a module used at two sites becomes two modules
    only if it was registered twice; a shared module stays shared). Returns ``model``.
    Raises :class:`ConfigError` when ``strict`` and no activation module was found, which
    happens when a model calls ``F.relu`` in ``forward`` (functional calls cannot be swapped).
    """
    factory = get_act_layer(act, **kwargs)
    types = activation_types()
    replaced: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, types):
                new = replaced.get(id(child))
                if new is None:
                    new = replaced[id(child)] = factory()
                setattr(parent, name, new)
    if strict and not replaced:
        raise ConfigError(
            f"{type(model).__name__} has no activation modules to convert; functional calls "
            "such as F.relu in forward() cannot be replaced - use nn.ReLU modules"
        )
    return model


def count_activations(model: nn.Module) -> int:
    """Number of distinct activation modules in ``model``."""
    return sum(1 for m in model.modules() if is_activation(m))
