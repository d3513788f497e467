"""The attack registry: ``@ATTACKS.register()`` above an attack class, and
``create_attack("pgd", eps=8/255, steps=40)`` to build one by name."""

from __future__ import annotations

import inspect
from typing import Any

from robustact.attacks.base import Attack
from robustact.errors import ConfigError
from robustact.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack; keyword arguments are its hyperparameters (eps on [0, 1]).
    An unknown option is a one-line error that lists the attack's valid ones."""
    cls = ATTACKS.get(name)
    valid = attack_options(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"attack {ATTACKS.resolve(name)!r} has no option "
                          f"{', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"attack {ATTACKS.resolve(name)!r}: {exc}") from None


def attack_options(cls: type[Attack]) -> list[str]:
    """The keyword options an attack class takes (its hyperparameters)."""
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]


def list_attacks() -> list[str]:
    return ATTACKS.names()
