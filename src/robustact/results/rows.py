"""Records as store rows: JSON columns, per-example outcome strings, evaluation and result rows.

Per-example outcomes (``correct``, ``attacked``) are strings of ``0`` and ``1``, one character
per evaluated example, in the order of the evaluated images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustact.errors import ConfigError

CLEAN = "clean"
WORST_CASE = "worst_case"

if TYPE_CHECKING:  # the record type loads robustact.eval (and torch): only where it is used
    from robustact.eval.record import EvalRecord


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """``json.dumps`` fallback: paths as strings, tensors and numpy numbers as Python values."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot store a {type(value).__name__} as JSON: {value!r}")


def dumps(value: Any) -> str:
    """``value`` as the JSON text of a column (keys sorted)."""
    return json.dumps(value, sort_keys=True, default=_plain)


class BadJSON(ValueError):
    """A JSON column of the store holds text that is not JSON (a damaged store)."""


def loads(text: str | None, where: str = "a JSON column") -> Any:
    """The JSON ``text`` of a column (``where``: its table.column, for the message)."""
    try:
        return None if text is None else json.loads(text)
    except (TypeError, ValueError) as exc:
        raise BadJSON(f"{where} holds bad JSON: {exc}") from None


def bits(values: Sequence[Any] | None) -> str | None:
    """Per-example outcomes as a string of ``0`` and ``1``."""
    if values is None:
        return None
    return "".join("1" if v else "0" for v in values)


def as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def as_int(value: Any) -> int | None:
    return None if value is None else int(value)


def as_str(value: Any) -> str | None:
    return None if value is None else str(value)


def row_dict(row: Any, *json_columns: str) -> dict[str, Any]:
    """A result row as a dict, the named JSON columns parsed."""
    out = dict(row._mapping)
    for column in json_columns:
        out[column] = loads(out[column], column)
    return out


def evaluation_rows(run_id: int, record: EvalRecord) -> tuple[dict[str, Any],
                                                             list[dict[str, Any]]]:
    """The ``evaluations`` row and the ``results`` rows of a robustness record."""
    evaluation = {
        "run_id": run_id, "checkpoint": as_str(record.checkpoint), "model": record.model,
        "activation": record.activation, "act_kwargs": dumps(record.act_kwargs),
        "dataset": record.dataset, "split": record.split, "n": as_int(record.n),
        "eps_list": dumps([float(e) for e in record.eps_list]),
        "n_samples": as_int(record.n_samples),
        "sequential": None if record.sequential is None else int(record.sequential),
        "seconds": as_float(record.seconds), "clean_accuracy": as_float(record.clean_accuracy),
        "clean_correct": bits(record.clean_correct), "evaluate_hash": record.evaluate_hash,
        "recorded": now(),
    }
    return evaluation, [result_row(run_id, position, row, record)
                        for position, row in enumerate(record.rows)]


def result_row(run_id: int, position: int, row: Any, record: EvalRecord) -> dict[str, Any]:
    """One ``results`` row: a row of the record with its attack's parameters and outcomes."""
    if not isinstance(row, Mapping) or "attack" not in row or "robust_accuracy" not in row:
        raise ConfigError(f"robustness row {position} lacks attack or robust_accuracy: {row!r}")
    eps = as_float(row.get("eps"))
    attack = record.attack(row["attack"], eps)
    details = {k: attack[k] for k in ("gradient_free", "eot", "bpda", "loss_trace",
                                      "grad_bad_fraction", "group", "flips", "suite")
               if k in attack}
    accuracy = float(row["robust_accuracy"])
    if math.isnan(accuracy):
        raise ConfigError(f"robustness row {position} ({row['attack']}) has a NaN accuracy")
    return {
        "run_id": run_id, "position": position, "attack": str(row["attack"]),
        "name": attack.get("name", row["attack"]), "eps": eps, "robust_accuracy": accuracy,
        "ci_low": as_float(row.get("ci_low")), "ci_high": as_float(row.get("ci_high")),
        "n": as_int(row.get("n")), "robust": as_int(row.get("robust")),
        "attacked": as_int(row.get("attacked")), "seconds": as_float(row.get("seconds")),
        "queries": as_float(row.get("queries")),
        "params": dumps(attack["params"]) if "params" in attack else None,
        "details": dumps(details) if details else None,
        "correct": (bits(attack.get("correct")) if attack else
                    bits(record.clean_correct) if row["attack"] == CLEAN else None),
        "attacked_mask": bits(attack.get("attacked")) if attack else None,
    }
