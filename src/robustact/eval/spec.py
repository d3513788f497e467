"""An attack by registry name and options, as written on the command line or in a study file:
``"pgd:steps=40,restarts=5,eot=32"``, a dict, or an :class:`AttackSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from robustact.attacks import Attack, create_attack
from robustact.attacks.base import check_count, check_flag
from robustact.errors import ConfigError

GROUPS = ("suite", "paper")


@dataclass
class AttackSpec:
    """An attack by registry name and hyperparameters (eps is set per evaluation eps).

    ``eot``: wrap the model in ``EOT(model, eot)`` for this attack (expectation over the
    randomness); ``bpda``: wrap it in ``BPDA(model)`` (surrogate gradients of masking layers).
    ``group``: "suite" for an attack of a preset suite (run in sequence on the points still
    robust), "paper" for one listed beside a suite (run on every clean-correct point, so its
    number stands alone, as in the seed papers' tables), None without a suite.
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
        if self.group is not None and self.group not in GROUPS:
            raise ConfigError(f"{what}: group must be one of {', '.join(GROUPS)}, "
                              f"got {self.group!r}")
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
        the remaining options) runs on the surrogate; PATH is a robustact checkpoint."""
        kwargs = dict(self.kwargs)
        surrogate = kwargs.pop("surrogate", None)
        if surrogate is None:
            raise ConfigError("transfer needs a surrogate model: transfer:surrogate=CHECKPOINT")
        name = kwargs.pop("surrogate_name", None)
        inner = kwargs.pop("inner", "pgd")
        if isinstance(surrogate, str):
            from robustact.models.checkpoint import load_model

            name = name or surrogate
            surrogate, _ = load_model(surrogate)
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


def _scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
