"""A study's per-cell summary rows, read from its results store (results.json, results.md)."""

from __future__ import annotations

from typing import Any

from robustact.results import ResultsStore
from robustact.study.cells import work_for
from robustact.study.config import StudyConfig
from robustact.study.image_cell import posthoc_label
from robustact.study.lifecycle import cell_status
from robustact.study.stores import existing_study_store


def collect_results(study: StudyConfig) -> list[dict[str, Any]]:
    """One summary per cell: status, timings, clean and robust accuracies, the verdict."""
    store = existing_study_store(study)
    return [_row(store, study.name, cell) for cell in study.cells]


def _row(store: ResultsStore | None, study: str, cell: Any) -> dict[str, Any]:
    status, why = cell_status(store, study, work_for(cell))
    run = store.run(study, cell.id) if store is not None else None
    stored = _stored(store, run["id"]) if run is not None else {}
    history = stored.get("history") or []
    final = history[-1] if history else {}
    return {
        "cell": cell.id, "status": status,
        "error": why if status == "stale" else (run or {}).get("error"),
        "model": cell.train.model, "activation": cell.train.activation,
        "act_kwargs": cell.train.act_kwargs,
        "adversarial": cell.train.adversarial.method if cell.train.adversarial else None,
        "posthoc": posthoc_label(cell.posthoc) if cell.posthoc else None,
        "epochs": len(history) or None,
        "train_seconds": sum(r.get("seconds", 0) for r in history) or None,
        "test_acc": final.get("kept_test_acc", final.get("test_acc")),
        "clean": stored.get("clean"), "n": stored.get("n"),
        "robust": stored.get("robust", {}), "verdict": stored.get("verdict"),
        "eval_seconds": stored.get("eval_seconds"),
    }


def _stored(store: Any, run_id: int) -> dict[str, Any]:
    evaluation = store.evaluation(run_id) or {}
    return {
        "history": store.epochs(run_id),
        "clean": evaluation.get("clean_accuracy"), "n": evaluation.get("n"),
        "eval_seconds": evaluation.get("seconds"),
        "robust": {f"{r['attack']}@{r['eps']:g}": r["robust_accuracy"]
                   for r in store.results(run_id=run_id) if r["eps"] is not None},
        "verdict": (store.diagnostics(run_id) or {}).get("verdict"),
    }
