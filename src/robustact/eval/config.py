"""The evaluation configuration: one typed object, its defaults in one place, one hash.

    config = EvalConfig.from_dict({"eps": ["8/255"], "n": 500, "attacks": ["pgd:steps=40"]})
    config.hash()        # the identity of the evaluation (not where or on what device it runs)

Study files (``evaluate:``), ``robustact attack`` and the Python API all build one. An eps is a
number or a fraction string (``0.1``, ``"8/255"``) everywhere. :meth:`EvalConfig.from_dict`
checks every value (types and ranges: :class:`robustact.eval.schema.EvalSchema`; an L-inf eps
at most 1; each attack spec) before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from robustact.errors import ConfigError
from robustact.eval.schema import EvalSchema
from robustact.options import OptionError, check_schema, parse_eps, short_hash, within

#: the evaluation every study and ``robustact attack`` get unless told otherwise
DEFAULT_SUITE = "adaptive"
NORMS = ("linf", "l2", "l1")
#: points per evaluation block (robustact.eval.shards)
BLOCK = 256


@dataclass(frozen=True)
class EvalConfig:
    """How a checkpoint is evaluated (see :func:`robustact.eval.robustness.evaluate`).

    ``suite``: a preset of :mod:`robustact.eval.suites`, or None for the listed ``attacks``
    alone (``suite: none`` in a file). ``attacks``: paper-style attack specs beside the suite.
    ``samples``: forward passes averaged per prediction (None: as many as a stable decision
    needs). ``independent``: without a suite, each attack on every clean-correct point.
    ``calibration`` / ``landscape``: options of the optional plots (None: not drawn).
    ``seed`` / ``block``: the points are evaluated in blocks of ``block``, each seeded from
    (``seed``, its index) (:mod:`robustact.eval.shards`), whatever the number of processes.
    """

    eps: tuple[float, ...]
    n: int = 1000
    suite: str | None = DEFAULT_SUITE
    attacks: tuple[Any, ...] = ()
    split: str = "test"
    norm: str | None = None
    samples: int | None = None
    independent: bool = False
    diagnose: bool = True
    probe_size: int = 200
    calibration: dict[str, Any] | None = None
    landscape: dict[str, Any] | None = None
    seed: int = 0
    block: int = BLOCK
    given: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.eps:
            raise ConfigError("evaluate needs eps, e.g. eps: [0.1] or [8/255]")
        if self.suite is None and not self.attacks:
            raise ConfigError("evaluate with suite: none needs a list of attacks (or give a "
                              "suite: adaptive, autoattack, autoattack-rand), e.g. fgsm,pgd")
        _positive(self.n, "n")
        _positive(self.probe_size, "probe_size")
        _positive(self.block, "block")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.samples is not None:
            _positive(self.samples, "samples")
        if self.norm is not None and self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")

    def check_attacks(self, prefix: str = "") -> None:
        """Each attack spec is valid, and an eps above 1 only comes with an L2 or L1 norm
        (an L-inf radius of 1 already covers the whole [0, 1] image range)."""
        from robustact.eval.spec import AttackSpec

        specs = [AttackSpec.parse(a) for a in self.attacks]
        norms = {self.norm} if self.norm else {s.kwargs.get("norm", "linf") for s in specs}
        if self.suite is not None and not self.norm:
            norms.add("linf")
        too_big = [e for e in self.eps if e > 1]
        if too_big and "linf" in norms:
            raise OptionError(prefix + "eps", f"{too_big[0]:g} is above 1, the whole [0, 1] "
                              "image range of an L-inf attack", "give eps in [0, 1], e.g. "
                              "8/255 (an L2 or L1 radius may exceed 1: add norm: l2)")

    def __getitem__(self, key: str) -> Any:
        """Read access by the study file's key: ``config["samples"]``."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Read access by key with a default, as on the study file's mapping."""
        return self.to_dict().get(key, default)

    @property
    def sequential(self) -> bool:
        return not self.independent

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("given")
        out["eps"], out["attacks"] = list(self.eps), list(self.attacks)
        return out

    def hash(self) -> str:
        """12 hex digits identifying what this evaluation measures (``seed`` and ``block``
        count only when not at their defaults, so earlier records keep their hash)."""
        data = self.to_dict()
        for key, default in _HASHED_IF_SET.items():
            if data[key] == default:
                del data[key]
        return short_hash(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "evaluate",
                  prefix: str = "") -> EvalConfig:
        """Build from study-file or command-line options, with one-line errors naming
        ``where`` and the key (``prefix`` + key: ``evaluate.n``): unknown keys, types and
        ranges, eps spelling, suite names, attack specs."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: evaluate must be a mapping of options, got {data!r}; "
                              "give e.g. evaluate: {eps: [0.1], n: 1000}")
        unknown = sorted(set(data) - KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown evaluate key(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(KEYS))}")
        try:
            check_schema(EvalSchema, data, prefix=prefix)
            config = cls(**_normalized(data, prefix), given=dict(data))
            config.check_attacks(prefix)
            return config
        except ConfigError as exc:
            raise within(where, exc) from None
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


_HASHED_IF_SET = {"seed": 0, "block": BLOCK}
KEYS = {f.name for f in dataclasses.fields(EvalConfig)} - {"given"}


def _normalized(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = dict(data)
    eps = out.get("eps")
    eps = eps if isinstance(eps, list | tuple) else [] if eps is None else [eps]
    # L2 budgets exceed 1 (check_attacks holds L-inf ones to 1)
    out["eps"] = tuple(parse_eps(e, high=math.inf, key=prefix + "eps") for e in eps)
    out["suite"] = _suite(out.get("suite", DEFAULT_SUITE))
    attacks = out.get("attacks") or ()
    if isinstance(attacks, str | dict):
        raise ConfigError(f"attacks must be a list, e.g. attacks: [fgsm, pgd], got {attacks!r}")
    out["attacks"] = tuple(attacks)
    for key in ("calibration", "landscape"):
        value = out.get(key)
        out[key] = (dict(value) if isinstance(value, dict) else {}) if value else None
    return out


def _suite(value: Any) -> str | None:
    if value is None or str(value).lower() == "none":
        return None
    from robustact.eval.suites import canonical_suite

    return canonical_suite(value)


def _positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
