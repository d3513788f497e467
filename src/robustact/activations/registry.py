"""Activation registry: names -> module constructors, and resolution of ``act_layer`` arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from robustact.errors import ConfigError
from robustact.registry import Registry

ActLayer = Callable[[], nn.Module]

ACTIVATIONS: Registry[Callable[..., nn.Module]] = Registry("activation")
# torch's own activations (the others register where they are defined, e.g. kwta.py, kaf.py)
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("elu")(nn.ELU)
ACTIVATIONS.register("swish", aliases=("silu",))(nn.SiLU)


def list_activations() -> list[str]:
    """Registered activation names (``"sap"`` once :mod:`robustact.defenses` is imported)."""
    return ACTIVATIONS.names()


def create_act(name: str, **kwargs: Any) -> nn.Module:
    """One activation module from its registry name: ``create_act("kwta", ratio=0.1)``."""
    ctor = ACTIVATIONS.get(name)
    try:
        return ctor(**kwargs)
    except TypeError as exc:  # unexpected keyword: say which activation refused it
        raise ConfigError(f"activation {name!r}: {exc}") from None
    except ValueError as exc:  # a value of the wrong kind, e.g. ratio='abc'
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(f"activation {name!r} ({given}): {str(exc).splitlines()[0]}") from None


def get_act_layer(act: str | ActLayer | None = "relu", **kwargs: Any) -> ActLayer:
    """Resolve an ``act_layer`` argument to a zero-argument module factory.

    ``act`` may be a registry name (with ``kwargs`` passed to its constructor), an ``nn.Module``
    class or any callable returning a module (``functools.partial(KWTA, ratio=0.1)``), or None
    for ReLU. Models call the result once per activation site, so every site gets its own module.
    """
    if act is None:
        act = "relu"
    if isinstance(act, str):
        factory = functools.partial(create_act, ACTIVATIONS.resolve(act), **kwargs)
        factory()  # fail now, with a clear message, on a bad keyword or value
        return factory
    if callable(act):
        return functools.partial(act, **kwargs) if kwargs else act
    raise ConfigError(f"act_layer must be a name, a module class or a callable, got {act!r}")
