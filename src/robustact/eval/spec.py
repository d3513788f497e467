"""An attack by registry name and options, as written on the command line or in a study file:
``"pgd:steps=40,restarts=5,eot=32"``, a dict, or an :class:`AttackSpec`.

A spec is checked when it is made, before any model is trained or loaded: the attack's
name, its option names (an unknown one lists the valid ones), the options' types and ranges
(:class:`robustact.eval.schema.SpecSchema`) and whatever the attack itself checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from robustact.attacks import Attack, create_attack
from robustact.attacks.base import check_count, check_flag
from robustact.attacks.registry import ATTACKS, attack_options
from robustact.errors import ConfigError
from robustact.eval.schema import SpecSchema
from robustact.options import check_schema

GROUPS = ("suite", "budgeted", "paper")
#: options of every spec, besides the attack's own hyperparameters
SPEC_OPTIONS = ("eot", "bpda", "label", "group")
#: options of ``transfer`` that describe a surrogate built by a factory
SURROGATE_OPTIONS = ("surrogate_weights", "surrogate_normalize", "surrogate_args")
#: an eps for the trial build that checks an attack's options (the real eps comes later)
TRIAL_EPS = 8 / 255


@dataclass
class AttackSpec:
    """An attack by registry name and hyperparameters (eps is set per evaluation eps).

    ``eot``: wrap the model in ``EOT(model, eot)`` for this attack (expectation over the
    randomness); ``bpda``: wrap it in ``BPDA(model)`` (surrogate gradients of masking layers).
    ``group``: "suite" for an attack of a preset suite (run in sequence on the points still
    robust), "budgeted" for a suite attack that runs so only while the block's passes stay
    within the suite's budget (:mod:`robustact.eval.budget`), "paper" for one listed beside a
    suite (run on every clean-correct point, so its number stands alone, as in the seed
    papers' tables), None without a suite.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    eot: int | None = None
    bpda: bool = False
    label: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        what = f"attack {self.name}"
        if self.eot is not None:
            self.eot = check_count(what, "eot", self.eot)
        self.bpda = check_flag(what, "bpda", self.bpda)
        check_options(self.name, self.kwargs)
        check_schema(SpecSchema, {"eot": self.eot, "bpda": self.bpda, "label": self.label,
                                  "group": self.group, **self.kwargs},
                     where=f"attack {self.name}")
        if self.name != "transfer":  # its surrogate is a checkpoint, loaded when it runs
            self.build(TRIAL_EPS)  # the attack's own checks (e.g. square's queries >= 2)
        if self.label is None:
            extras = ([f"eot{self.eot}"] if self.eot else []) + (["bpda"] if self.bpda else [])
            self.label = "+".join([self.name, *extras])

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | AttackSpec) -> AttackSpec:
        """``"pgd"``, ``"pgd:steps=40,restarts=5,eot=32"``, a dict or an AttackSpec."""
        if isinstance(spec, AttackSpec):
            return spec
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("name", None)
            if not name:
                raise ConfigError(f"attack spec {spec!r} needs a name")
            return cls(name, eot=spec.pop("eot", None), bpda=spec.pop("bpda", False),
                       label=spec.pop("label", None), group=spec.pop("group", None),
                       kwargs=spec)
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"attack spec must be a name, a dict or an AttackSpec: {spec!r}")
        name, _, rest = spec.partition(":")
        options: dict[str, Any] = {"name": name.strip()}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"attack option {item!r} in {spec!r} must be KEY=VALUE")
            options[key.strip()] = _scalar(value.strip())
        return cls.parse(options)

    def build(self, eps: float) -> Attack:
        if self.name == "transfer":
            return self._build_transfer(eps)
        return create_attack(self.name, eps=eps, **self.kwargs)

    def _build_transfer(self, eps: float) -> Attack:
        """``transfer:surrogate=PATH,inner=pgd,steps=40``: the inner attack (default PGD, with
        the remaining options) runs on the surrogate; PATH is a robustact checkpoint, or a
        user's model: ``surrogate=pkg.mod:fn,surrogate_weights=FILE,surrogate_normalize=
        cifar10`` (or, in a study file, a mapping like a cell's ``external:`` block)."""
        kwargs = dict(self.kwargs)
        surrogate = kwargs.pop("surrogate", None)
        if surrogate is None:
            raise ConfigError("transfer needs a surrogate model: transfer:surrogate=CHECKPOINT")
        name = kwargs.pop("surrogate_name", None)
        inner = kwargs.pop("inner", "pgd")
        outside = {k: kwargs.pop(k) for k in SURROGATE_OPTIONS if k in kwargs}
        if isinstance(surrogate, str | dict):
            name = name or (surrogate if isinstance(surrogate, str)
                            else surrogate.get("factory"))
            surrogate = load_surrogate(surrogate, outside)
        return create_attack("transfer", eps=eps, surrogate=surrogate, surrogate_name=name,
                             attack=create_attack(inner, eps=eps, **kwargs),
                             norm=kwargs.get("norm", "linf"))

    def wrap(self, model: nn.Module) -> nn.Module:
        from robustact.attacks.wrappers import BPDA, EOT

        if self.bpda:
            model = BPDA(model)
        if self.eot:
            model = EOT(model, int(self.eot))
        return model


def load_surrogate(surrogate: str | dict[str, Any], options: dict[str, Any]) -> nn.Module:
    """The surrogate model of a transfer attack: a robustact checkpoint (a path), or a user's
    model (``pkg.mod:fn`` with ``surrogate_weights``/``surrogate_normalize``, or a mapping of
    :class:`robustact.models.external.ModelSpec` keys)."""
    from pathlib import Path

    from robustact.models.checkpoint import load_model
    from robustact.models.external import ModelSpec, build_external

    if isinstance(surrogate, str) and (":" not in surrogate or Path(surrogate).exists()):
        if options:
            raise ConfigError(f"transfer: {', '.join(options)} describe a surrogate built by "
                              "a factory; give surrogate=package.module:function with them")
        return load_model(surrogate)[0]
    spec = dict(surrogate) if isinstance(surrogate, dict) else {"factory": surrogate}
    for key, value in options.items():
        spec[key.removeprefix("surrogate_")] = value
    return build_external(ModelSpec.from_dict(spec, "transfer surrogate"))


def check_options(name: str, kwargs: dict[str, Any]) -> None:
    """One-line errors for an unknown attack, or options it does not take (listing the valid
    ones; ``targeted`` on an attack without a targeted mode says which attacks have one)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"attack spec needs a name, got {name!r}; give e.g. pgd:steps=40")
    cls = ATTACKS.get(name)  # an unknown name lists the valid ones
    valid = [o for o in attack_options(cls) if o != "eps"] + list(SPEC_OPTIONS)
    if name == "transfer":
        return  # the inner attack's options travel with it
    unknown = sorted(set(kwargs) - set(valid))
    if "targeted" in unknown:
        targeted = [n for n in ATTACKS.names() if "targeted" in attack_options(ATTACKS.get(n))]
        raise ConfigError(f"attack {name}: targeted is not supported by {name}; use an attack "
                          f"with a targeted mode: {', '.join(targeted)}")
    if unknown:
        raise ConfigError(f"attack {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"valid options: {', '.join(valid)}")


def _scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
