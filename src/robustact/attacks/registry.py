"""The attack registry: ``create_attack("pgd", eps=8/255, steps=40)``."""

from __future__ import annotations

from typing import Any

from robustact.attacks.base import Attack
from robustact.errors import ConfigError
from robustact.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack; keyword arguments are its hyperparameters (eps on [0, 1])."""
    cls = ATTACKS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"attack {ATTACKS.resolve(name)!r}: {exc}") from None


def list_attacks() -> list[str]:
    return ATTACKS.names()
