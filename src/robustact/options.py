"""Option files and their identity: reading YAML/JSON, typed construction, stable hashes, eps.

Every configuration of the package (training, evaluation, DQN, study files) is read by
:func:`load_config_file`, built by :func:`from_options` and identified by :func:`short_hash`
(:class:`OptionsMixin` gives a dataclass of options ``to_dict``, ``from_dict``, ``hash``).
An eps (or FGSM lambda) is spelled the same way everywhere: a number or a fraction string
such as ``"8/255"`` (:func:`parse_eps`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import yaml

from robustact.errors import ConfigError

_T = TypeVar("_T")


def short_hash(payload: Any) -> str:
    """12 hex digits of the SHA-256 of ``payload`` as canonical JSON (sorted keys): the
    identity of a training or evaluation configuration."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def from_options(cls: type[_T], data: dict[str, Any], what: str) -> _T:
    """``cls(**data)`` for a dataclass of options, with a one-line error naming the unknown
    keys and the valid ones (``what``: "training", "adversarial", "DQN", ...)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(names))}")
    return cls(**data)


class OptionsMixin:
    """``to_dict``, ``from_dict`` and ``hash`` of a dataclass of options. A subclass names its
    options in ``OPTIONS_WHAT`` (for errors) and lists in ``UNHASHED`` the fields that do not
    change its result (where it is written, how it reports)."""

    OPTIONS_WHAT: ClassVar[str] = "options"
    UNHASHED: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return from_options(cls, data, cls.OPTIONS_WHAT)

    def hash(self) -> str:
        """A short hash of what determines the result: every option but ``UNHASHED``."""
        return short_hash({k: v for k, v in self.to_dict().items() if k not in self.UNHASHED})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) file of options; returns a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options")
    return data


def parse_eps(value: Any, *, what: str = "eps", high: float = 1.0) -> float:
    """An eps from a number or a fraction string (``0.1``, ``"8/255"``), checked to lie in
    [0, ``high``] on the [0, 1] image scale."""
    if isinstance(value, str):
        head, sep, tail = value.partition("/")
        try:
            number = float(head) / float(tail) if sep else float(head)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{what} must be a number or N/255, got {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ConfigError(f"{what} must be a number or N/255, got {value!r}")
    if not 0 <= number <= high or math.isnan(number):
        raise ConfigError(f"{what} must be in [0, {high:g}] on the [0, 1] image scale, got "
                          f"{value!r}")
    return number
