"""The records a report is built from: everything the results store holds about each run.

    records = load_records(store, "kaf_fmnist")   # one RunRecords per run, in recording order
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from robustact.errors import ConfigError
from robustact.report.svg import color
from robustact.results.store import ResultsStore


@dataclass
class RunRecords:
    """Everything the store holds about one run."""

    run: dict[str, Any]
    evaluation: dict[str, Any] | None
    results: list[dict[str, Any]]
    diagnostics: dict[str, Any] | None
    epochs: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]
    index: int = 0  # position in the study: the run's colour in every figure

    @property
    def cell(self) -> str:
        return str(self.run["cell"])

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config") or {}

    def get(self, key: str) -> Any:
        """A config value, else the evaluation's (model, activation, dataset, act_kwargs)."""
        value = self.config.get(key)
        if value is None and self.evaluation:
            value = self.evaluation.get(key)
        return value

    def result(self, attack: str, eps: float | None) -> dict[str, Any] | None:
        for row in self.results:
            if row["attack"] == attack and row["eps"] == eps:
                return row
        return None

    @property
    def color(self) -> str:
        return color(self.index)

    @property
    def verdict(self) -> str | None:
        return (self.diagnostics or {}).get("verdict")

    @property
    def checks(self) -> list[dict[str, Any]]:
        """The diagnostics' checks (fired or not)."""
        return (self.diagnostics or {}).get("checks") or []

    @property
    def suite(self) -> str | None:
        """The preset suite the run was evaluated with (None without one)."""
        return next(((row.get("details") or {}).get("suite") for row in self.results
                     if (row.get("details") or {}).get("suite")), None)

    @property
    def overestimating(self) -> set[str]:
        """``label@eps`` of the attacks the diagnostics found overestimating robustness."""
        for check in self.checks:
            if check.get("name") == "overestimates" and check.get("fired"):
                return set((check.get("details") or {}).get("flagged") or [])
        return set()

    def payloads(self, kind: str) -> list[Any]:
        """The payloads of the run's artifacts of ``kind``, in recording order."""
        return [a["payload"] for a in self.artifacts if a["kind"] == kind]


def load_records(store: ResultsStore, study: str) -> list[RunRecords]:
    """The records of every run of ``study``, in recording order."""
    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.studies()) or "none"
        raise ConfigError(f"results store {store} has no runs of study {study!r}; "
                          f"studies: {known}")
    return [RunRecords(run, store.evaluation(run["id"]), store.results(run_id=run["id"]),
                       store.diagnostics(run["id"]), store.epochs(run["id"]),
                       store.artifacts(run["id"]), index=i)
            for i, run in enumerate(runs)]
