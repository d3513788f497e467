"""A study's summary rows, read from its results store: per cell (results.json, results.md)
and the paper's numbers beside ours (``robustact report``).

    rows = paper_rows(load_study("configs/kwta/resnet18_cifar10_scratch.yaml"), store)
    # [{"cell": "relu", "metric": "clean", "eps": None, "paper": 93.66, "ours": 91.2,
    #   "status": "done", "source": "seed 000, Table 6, ReLU"}, ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustact.results import ResultsStore
from robustact.results.rows import CLEAN
from robustact.study.cells import work_for
from robustact.study.config import StudyConfig
from robustact.study.image_cell import posthoc_label
from robustact.study.lifecycle import cell_status
from robustact.study.rl_config import load_any_study
from robustact.study.shipped import is_shipped, study_file
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
        "model": cell.external.label() if cell.external else cell.train.model,
        "activation": "external" if cell.external else cell.train.activation,
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


def paper_rows(study: Any, store: ResultsStore | None) -> list[dict[str, Any]]:
    """One row per number of the cells' ``paper:`` blocks: the cell, the metric (``clean`` or
    an attack label), its eps (None for clean; an attack's single number stands for the
    evaluation's only eps), the paper's percentage, ours in % from ``store`` (None unless the
    cell is done and recorded it), the cell's status and the block's source. Image studies
    only: an RL study gives none."""
    if not isinstance(study, StudyConfig):
        return []
    rows = []
    for cell in study.cells:
        if not cell.paper:
            continue
        status, _ = cell_status(store, study.name, work_for(cell))
        run = store.run(study.name, cell.id) if store is not None else None
        ours = _ours(store, run["id"]) if status == "done" and run is not None else {}
        for metric, eps, number in _paper_numbers(cell):
            rows.append({"cell": cell.id, "metric": metric, "eps": eps, "paper": number,
                         "ours": _lookup(ours, metric, eps), "status": status,
                         "source": cell.paper.get("source")})
    return rows


def _paper_numbers(cell: Any) -> list[tuple[str, float | None, float]]:
    """(metric, eps, percentage) of a cell's paper block, in the block's order."""
    only = cell.evaluate.eps[0] if cell.evaluate and len(cell.evaluate.eps) == 1 else None
    out: list[tuple[str, float | None, float]] = []
    for metric, value in cell.paper.items():
        if metric == "source":
            continue
        if metric == CLEAN:
            out.append((metric, None, value))
        elif isinstance(value, dict):
            out += [(metric, float(eps), number) for eps, number in value.items()]
        else:
            out.append((metric, only, value))
    return out


def _lookup(ours: dict[Any, float], metric: str, eps: float | None) -> float | None:
    """Our percentage for ``metric`` at ``eps`` (eps matched to 1e-9), None if not recorded."""
    if metric == CLEAN:
        return ours.get(CLEAN)
    if eps is None:
        return None
    return next((value for key, value in ours.items() if key != CLEAN and key[0] == metric
                 and abs(key[1] - eps) < 1e-9), None)


def _ours(store: Any, run_id: int) -> dict[Any, float]:
    """A run's recorded accuracies in %: ``clean`` and (attack label, eps) -> percentage."""
    evaluation = store.evaluation(run_id) or {}
    out: dict[Any, float] = {}
    if evaluation.get("clean_accuracy") is not None:
        out[CLEAN] = 100 * evaluation["clean_accuracy"]
    for r in store.results(run_id=run_id):
        if r["eps"] is not None and r.get("robust_accuracy") is not None:
            out[(r["attack"], r["eps"])] = 100 * r["robust_accuracy"]
    return out


def study_paper_rows(source: str, store: ResultsStore) -> list[dict[str, Any]]:
    """:func:`paper_rows` of the study file ``source`` (a YAML path or a shipped study's name)
    with ours from ``store``; none for a study directory or a results store (the paper's
    numbers live in the study file only)."""
    path = Path(source)
    if not path.exists() and path.suffix not in (".sqlite", ".db") and is_shipped(source):
        path = study_file(source)
    if path.suffix not in (".yaml", ".yml"):
        return []
    return paper_rows(load_any_study(path), store)
