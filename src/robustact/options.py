"""Option files and their identity: reading YAML/JSON, typed construction, stable hashes, eps.

Every configuration of the package (training, evaluation, DQN, study files) is read by
:func:`load_config_file`, built by :func:`from_options` and identified by :func:`short_hash`
(:class:`OptionsMixin` gives a dataclass of options ``to_dict``, ``from_dict``, ``hash``).
Values are checked by pydantic schemas (:class:`Schema`, :func:`check_schema`): a
``ValidationError`` becomes one ``ConfigError`` line, ``<key>: <what is wrong>; <what to do>``.
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
from pydantic import BaseModel, ConfigDict, ValidationError

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
        raise ConfigError(f"config file {path} not found; give the path of a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (a binary file?); give a YAML file "
                          "of options") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its "
                          "permissions") from None
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options (key: value "
                          f"lines), got a {type(data).__name__}")
    return data


class Schema(BaseModel):
    """Base of the pydantic schemas that check option values: strict types (YAML and argparse
    give real numbers and booleans), no unknown keys, no NaN or infinity. A field's
    ``description`` says what to do when its value is wrong."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class OptionError(ConfigError):
    """A bad option value, by key: ``<key>: <what is wrong>; <what to do>``. Callers add where
    it was given (:func:`within`), or name the command-line flag instead of the key."""

    def __init__(self, key: str, problem: str, hint: str) -> None:
        self.key, self.problem, self.hint = key, problem, hint
        super().__init__(f"{key}: {problem}; {hint}")

    def as_flag(self, flag: str) -> ConfigError:
        """The same error, naming a command-line flag: ``--n must be >= 1, got 0; ...``."""
        return ConfigError(f"{flag} {self.problem}; {self.hint}")


def within(where: str, exc: ConfigError) -> ConfigError:
    """``exc`` with where it happened in front: ``<where>, <key>: ...`` for an
    :class:`OptionError`, ``<where>: <message>`` for another error."""
    if isinstance(exc, OptionError):
        return OptionError(f"{where}, {exc.key}", exc.problem, exc.hint)
    return ConfigError(f"{where}: {exc}")


def check_schema(schema: type[Schema], data: dict[str, Any], where: str = "",
                 prefix: str = "") -> None:
    """Check ``data`` against ``schema``; the first problem is one :class:`OptionError` line,
    ``[where, ]<prefix><key>: <what is wrong>; <what to do>``. The values themselves are not
    converted (a configuration's hash is the hash of what was given)."""
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        error = schema_error(schema, exc, prefix)
        raise (within(where, error) if where else error) from None


def schema_error(schema: type[Schema], exc: ValidationError, prefix: str = "") -> OptionError:
    """The :class:`OptionError` of the first error of a schema's ``ValidationError`` (the key
    path joined by dots: ``adversarial.eps``)."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    key = prefix + (loc[0] if loc else "value") + "".join(
        _key_part(part) for part in error["loc"][1:])
    field = schema.model_fields.get(loc[0]) if loc else None
    hint = field.description if field is not None and field.description else "fix the value"
    if error["type"] == "extra_forbidden":
        top = len(loc) == 1
        return OptionError(key, "is not a known key", f"valid keys: "
                           f"{', '.join(sorted(schema.model_fields))}" if top else hint)
    return OptionError(key, _problem(error), hint)


#: the type tags pydantic puts in an error's location when a union's member fails
_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "dict", "list", "tuple", "none"})


def _key_part(part: int | str) -> str:
    """A list index (``[2]``) or a nested key (``.n``) of an error's location; the names of
    the union members pydantic tried (``int``, ``constrained-int``, ``CalibrationSchema``)
    are left out."""
    if isinstance(part, int):
        return f"[{part}]"
    if part.isidentifier() and part[0].islower() and part not in _TYPE_TAGS:
        return f".{part}"
    return ""


_PROBLEMS = {
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number", "float_type": "must be a number",
    "float_parsing": "must be a number", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "string_type": "must be a text",
    "dict_type": "must be a mapping (key: value)", "list_type": "must be a list",
    "model_type": "must be a mapping (key: value)",
    "tuple_type": "must be a list", "finite_number": "must be a finite number",
    "missing": "is required",
}


def _problem(error: Any) -> str:
    """``must be ..., got X`` for one pydantic error."""
    kind, got = error["type"], error.get("input")
    ctx = {k: f"{v:g}" if isinstance(v, int | float) else v
           for k, v in (error.get("ctx") or {}).items()}
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}",
              "less_than": "< {lt}", "less_than_equal": "<= {le}"}
    if kind in bounds:
        text = "must be " + bounds[kind].format(**ctx)
    elif kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    elif kind == "literal_error":
        text = f"must be one of {ctx.get('expected', '')}"
    else:
        text = _PROBLEMS.get(kind, error["msg"].lower())
    return text if kind == "missing" else f"{text}, got {got!r}"


def parse_eps(value: Any, *, what: str = "eps", high: float = 1.0,
              key: str | None = None) -> float:
    """An eps from a number or a fraction string (``0.1``, ``"8/255"``), checked to lie in
    [0, ``high``] on the [0, 1] image scale. With ``key``, an error is an
    :class:`OptionError` of that key (``adversarial.eps: must be ...``)."""
    if isinstance(value, str):
        head, sep, tail = value.partition("/")
        try:
            number = float(head) / float(tail) if sep else float(head)
        except (ValueError, ZeroDivisionError):
            number = math.nan
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if math.isnan(number):
        problem = f"must be a number or N/255, got {value!r}"
    elif not 0 <= number <= high:
        problem = f"must be in [0, {high:g}] on the [0, 1] image scale, got {value!r}"
    else:
        return number
    if key is not None:
        raise OptionError(key, problem, "give e.g. 0.1 or 8/255")
    raise ConfigError(f"{what} {problem}; give e.g. 0.1 or 8/255")
