"""The evaluation record: what one evaluation measured and on what, as the store keeps it.

    record = EvalRecord.from_dict(json.loads(Path("runs/x/robustness.json").read_text()))
    record.rows           # one row per attack and eps, clean and worst case included
    record.to_dict()      # the JSON form, exported as robustness.json

It is built by :func:`robustact.eval.checkpoint.attack_checkpoint` from a
:class:`~robustact.eval.robustness.RobustnessReport`, recorded by
:meth:`robustact.results.ResultsStore.record_robustness` and read back from there by the
reports. Only ``rows`` is required; the other fields are None when unknown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustact.errors import ConfigError


@dataclass
class EvalRecord:
    """One evaluation of a checkpoint (see the module docstring)."""

    rows: list[dict[str, Any]]
    checkpoint: str | None = None
    model: str | None = None
    defense: dict[str, Any] | None = None
    activation: str | None = None
    act_kwargs: dict[str, Any] | None = None
    dataset: str | None = None
    split: str | None = None
    n: int | None = None
    eps_list: list[float] = field(default_factory=list)
    n_samples: int | None = None
    sequential: bool | None = None
    seconds: float | None = None
    clean_accuracy: float | None = None
    randomized: bool | None = None
    clean_flips: int | None = None
    suite: dict[str, Any] | None = None
    attacks: list[dict[str, Any]] = field(default_factory=list)
    clean_correct: list[int] | None = None
    diagnostics: dict[str, Any] | None = None
    evaluate_hash: str | None = None
    cell: str | None = None
    posthoc: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (robustness.json), in the field order above but ``rows`` after
        ``suite`` as before."""
        data = dataclasses.asdict(self)
        rows = data.pop("rows")
        out = {k: data[k] for k in _HEAD}
        out["rows"] = rows
        out.update((k, v) for k, v in data.items() if k not in out)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | EvalRecord) -> EvalRecord:
        """A record from its JSON form; extra keys are ignored, a missing ``rows`` list is a
        one-line error."""
        if isinstance(data, EvalRecord):
            return data
        if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list):
            raise ConfigError("not a robustness record (it has no list of rows); pass the dict "
                              "written to robustness.json")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**values)

    def attack(self, label: str, eps: float | None) -> dict[str, Any]:
        """The per-attack entry (params, per-example outcomes, ...) of ``label`` at ``eps``,
        or an empty dict."""
        for entry in self.attacks:
            if entry.get("label") == label and _same_eps(entry.get("eps"), eps):
                return entry
        return {}


_HEAD = ("checkpoint", "model", "defense", "activation", "act_kwargs", "dataset", "split", "n",
         "eps_list", "n_samples", "sequential", "seconds", "clean_accuracy", "randomized",
         "clean_flips", "suite")


def _same_eps(a: Any, b: Any) -> bool:
    return (a is None and b is None) or (a is not None and b is not None
                                         and float(a) == float(b))
