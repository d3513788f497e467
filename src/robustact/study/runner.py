"""Run a study: train every cell (or reuse its finished checkpoint), evaluate it, tabulate.

Each cell works in ``<study out>/<cell id>/``: the training run's files, ``robustness.json`` /
``.csv`` (the evaluation) and ``cell.json`` (status, timings, error). Every cell is also
recorded in the study's results store, ``<study out>/results.sqlite`` (runs, epochs, results,
diagnostics, artifacts; see :mod:`robustact.results`), from which ``robustact report``
renders. Re-running skips what is done: a finished training run with the same configuration
hash is reused, an interrupted one is resumed, an evaluation with the same settings on the same
checkpoint is reused. A cell that fails is recorded as failed and the others go on.
``results.md`` / ``results.json`` in the study directory tabulate every cell with results.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robustact.study.config import Cell, StudyConfig

ROBUSTNESS = "robustness"


@dataclass
class CellResult:
    id: str
    status: str  # "done" or "failed"
    train_seconds: float | None = None
    eval_seconds: float | None = None
    error: str | None = None


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _evaluate_hash(cell: Cell, evaluate: dict[str, Any]) -> str:
    payload = {"train": cell.train.hash(), "evaluate": evaluate}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def store_path(study: StudyConfig) -> Path:
    return study.out / "results.sqlite"


def run_cell(study: StudyConfig, cell: Cell, *, log: Any = print) -> CellResult:
    """Train and evaluate one cell, skipping finished steps (see the module docstring)."""
    from robustact.device import select_device
    from robustact.eval.checkpoint import attack_checkpoint, write_robustness
    from robustact.results import ResultsStore
    from robustact.train import train

    out = Path(cell.train.out)
    result = CellResult(cell.id, "failed")
    store = ResultsStore(store_path(study))
    try:
        device = str(select_device(cell.train.device))
    except Exception:  # noqa: BLE001 - recorded with the failure below
        device = None
    kw = dict(config=cell.train.to_dict(), config_hash=cell.train.hash(), device=device,
              seed=cell.train.seed)
    run_id = store.record_run(study.name, cell.id, status="running", **kw)
    try:
        summary = out / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get(
                "config_hash") == cell.train.hash():
            log(f"[{cell.id}] trained earlier: {out}")
        else:
            resume = (out / "checkpoint.pt").exists()
            log(f"[{cell.id}] {'resuming' if resume else 'training'} -> {out}")
            start = time.perf_counter()
            train(cell.train, resume=resume, log=lambda m: log(f"[{cell.id}] {m}"))
            result.train_seconds = round(time.perf_counter() - start, 1)
        history = _read_history(out)
        store.record_epochs(run_id, history)
        if result.train_seconds is None:  # reused: the epochs' own times
            result.train_seconds = round(sum(r.get("seconds", 0) for r in history), 1) or None
        if study.evaluate:
            ev = study.evaluate
            key = _evaluate_hash(cell, ev)
            stem = out / ROBUSTNESS
            done = stem.with_suffix(".json")
            if done.exists() and json.loads(done.read_text()).get("evaluate_hash") == key:
                log(f"[{cell.id}] evaluated earlier: {done}")
                store.record_robustness(run_id, json.loads(done.read_text()))
            else:
                log(f"[{cell.id}] evaluating: {', '.join(map(str, ev['attacks']))} "
                    f"at eps {ev['eps']} on {ev.get('n', 1000)} images")
                start = time.perf_counter()
                record, report = attack_checkpoint(
                    out, ev["attacks"], [float(e) for e in ev["eps"]], ev.get("n", 1000),
                    split=ev.get("split", "test"), norm=ev.get("norm"),
                    n_samples=ev.get("samples", 1), sequential=not ev.get("independent", False),
                    diagnose=ev.get("diagnose", True), probe_size=ev.get("probe_size", 200),
                    device=cell.train.device,
                    progress=lambda m: log(f"[{cell.id}] {m}"))
                result.eval_seconds = round(time.perf_counter() - start, 1)
                record["evaluate_hash"] = key
                record["cell"] = cell.id
                write_robustness(record, report, stem)
                store.record_robustness(run_id, record)
                log(f"[{cell.id}]\n{report.table()}")
                if report.diagnostics is not None:
                    log(f"[{cell.id}] {report.diagnostics.verdict}")
        result.status = "done"
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the study
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log(f"[{cell.id}] FAILED: {result.error}")
        (out / "error.log").parent.mkdir(parents=True, exist_ok=True)
        (out / "error.log").write_text(traceback.format_exc())
    store.record_run(study.name, cell.id, status=result.status, error=result.error,
                     train_seconds=result.train_seconds, eval_seconds=result.eval_seconds, **kw)
    out.mkdir(parents=True, exist_ok=True)
    previous = _read(out / "cell.json") or {}
    status = {**previous, **{k: v for k, v in asdict(result).items() if v is not None}}
    if result.status == "done":
        status.pop("error", None)
    _atomic_json(out / "cell.json", status)
    return result


def run_study(study: StudyConfig, *, cells: list[str] | None = None,
              log: Any = print) -> list[CellResult]:
    """Run the given cells (all by default) one after the other; then write the tables."""
    chosen = [study.cell(c) for c in cells] if cells else study.cells
    results = []
    for i, cell in enumerate(chosen, 1):
        log(f"== cell {i}/{len(chosen)}: {cell.id}")
        results.append(run_cell(study, cell, log=log))
    table = results_table(study)
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "results.md").write_text(table + "\n")
    _atomic_json(study.out / "results.json", collect_results(study))
    log(f"results: {study.out / 'results.md'}")
    return results


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_results(study: StudyConfig) -> list[dict[str, Any]]:
    """One summary per cell: status, timings, clean and robust accuracies, the verdict."""
    rows = []
    for cell in study.cells:
        out = Path(cell.train.out)
        status = _read(out / "cell.json") or {"status": "not run"}
        summary = _read(out / "summary.json") or {}
        record = _read(out / f"{ROBUSTNESS}.json") or {}
        history = _read_history(out)
        row: dict[str, Any] = {
            "cell": cell.id, "status": status.get("status"), "error": status.get("error"),
            "model": cell.train.model, "activation": cell.train.activation,
            "act_kwargs": cell.train.act_kwargs,
            "adversarial": (cell.train.adversarial.method if cell.train.adversarial else None),
            "epochs": summary.get("epochs"),
            "train_seconds": sum(r.get("seconds", 0) for r in history) or None,
            "test_acc": (summary.get("final") or {}).get("kept_test_acc",
                                                         (summary.get("final") or {})
                                                         .get("test_acc")),
            "clean": record.get("clean_accuracy"), "n": record.get("n"),
            "robust": {f"{r['attack']}@{r['eps']:g}": r["robust_accuracy"]
                       for r in record.get("rows", []) if r["eps"] is not None},
            "verdict": (record.get("diagnostics") or {}).get("verdict"),
            "eval_seconds": record.get("seconds"),
        }
        rows.append(row)
    return rows


def _read_history(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def results_table(study: StudyConfig) -> str:
    """A markdown table: one row per cell, robust accuracy (%) per attack and eps."""
    rows = collect_results(study)
    columns = list(dict.fromkeys(k for r in rows for k in r["robust"]))
    worst = [c for c in columns if c.startswith("worst_case@")]
    columns = [c for c in columns if c not in worst] + worst
    head = ["cell", "activation", "training", "clean", *columns, "verdict", "train s", "eval s"]
    lines = [f"# {study.name}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['cell']} | {r['activation']} | | {r['status']}"
                         f"{': ' + r['error'] if r['error'] else ''} |" + " |" * (len(head) - 4))
            continue
        training = r["adversarial"] + "-AT" if r["adversarial"] else "standard"
        lines.append("| " + " | ".join([
            r["cell"], r["activation"], training, pct(r["clean"]),
            *(pct(r["robust"].get(c)) for c in columns),
            r["verdict"] or "-",
            f"{r['train_seconds']:.0f}" if r["train_seconds"] else "-",
            f"{r['eval_seconds']:.0f}" if r["eval_seconds"] else "-",
        ]) + " |")
    n = next((r["n"] for r in rows if r["n"]), None)
    if n:
        lines += ["", f"Robust accuracy in % on {n} test images; worst_case = correct under "
                  "every attack at that eps."]
    return "\n".join(lines)
