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

import dataclasses
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.files import write_json
from robustact.options import short_hash
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
    write_json(path, data)


def _evaluate_hash(cell: Cell, evaluate: dict[str, Any]) -> str:
    payload: dict[str, Any] = {"train": cell.train.hash(), "evaluate": evaluate}
    if cell.posthoc:
        payload["posthoc"] = cell.posthoc
    return short_hash(payload)


def store_path(study: StudyConfig) -> Path:
    return study.out / "results.sqlite"


def run_cell(study: StudyConfig, cell: Cell, *, log: Any = print) -> CellResult:
    """Train and evaluate one cell, skipping finished steps (see the module docstring)."""
    from robustact.device import select_device
    from robustact.eval.checkpoint import attack_checkpoint, write_robustness
    from robustact.results import ResultsStore
    from robustact.train import train

    out, tdir = cell.out, cell.train_dir
    result = CellResult(cell.id, "failed")
    store = ResultsStore(store_path(study))
    try:
        device = str(select_device(cell.train.device))
    except Exception:  # noqa: BLE001 - recorded with the failure below
        device = None
    config = {**cell.train.to_dict(), "out": str(cell.train_dir), "posthoc": cell.posthoc}
    kw = dict(config=config, config_hash=cell.train.hash(), device=device,
              seed=cell.train.seed)
    run_id = store.record_run(study.name, cell.id, status="running", **kw)
    try:
        source = cell.train.finetune_from
        if source and not Path(source).exists() and cell.needs:
            raise ConfigError(f"cell {cell.id} fine-tunes from cell {cell.needs[0]}, which has "
                              "no checkpoint yet; run that cell first")
        trained_hash = (_read(tdir / "summary.json") or {}).get("config_hash")
        if trained_hash == cell.train.hash():
            log(f"[{cell.id}] trained earlier: {tdir}")
        elif trained_hash is not None:
            raise ConfigError(
                f"{tdir} holds a run trained with other options (the study file changed); "
                f"move it away (mv {tdir} {tdir}.old) and rerun to retrain cell {cell.id}")
        else:
            resume = (tdir / "checkpoint.pt").exists()
            log(f"[{cell.id}] {'resuming' if resume else 'training'} -> {tdir}")
            start = time.perf_counter()
            train(dataclasses.replace(cell.train, out=str(tdir)), resume=resume,
                  log=lambda m: log(f"[{cell.id}] {m}"))
            result.train_seconds = round(time.perf_counter() - start, 1)
        history = _read_history(tdir)
        store.record_epochs(run_id, history)
        if result.train_seconds is None:  # reused: the epochs' own times
            result.train_seconds = round(sum(r.get("seconds", 0) for r in history), 1) or None
        if cell.evaluate:
            ev = cell.evaluate
            key = _evaluate_hash(cell, ev)
            stem = out / ROBUSTNESS
            done = stem.with_suffix(".json")
            if done.exists() and json.loads(done.read_text()).get("evaluate_hash") == key:
                log(f"[{cell.id}] evaluated earlier: {done}")
                store.record_robustness(run_id, json.loads(done.read_text()))
            else:
                defense = f" with {_posthoc_label(cell.posthoc)}" if cell.posthoc else ""
                suite = None if ev.get("suite", "none") == "none" else ev["suite"]
                what = [f"suite {suite}"] * bool(suite) + list(map(str, ev.get("attacks", [])))
                log(f"[{cell.id}] evaluating{defense}: {', '.join(what)} "
                    f"at eps {ev['eps']} on {ev.get('n', 1000)} images")
                start = time.perf_counter()
                record, report = attack_checkpoint(
                    tdir, ev.get("attacks", []), [float(e) for e in ev["eps"]],
                    ev.get("n", 1000), suite=suite, defense=cell.posthoc,
                    split=ev.get("split", "test"), norm=ev.get("norm"),
                    n_samples=ev.get("samples"), sequential=not ev.get("independent", False),
                    diagnose=ev.get("diagnose", True), probe_size=ev.get("probe_size", 200),
                    device=cell.train.device,
                    progress=lambda m: log(f"[{cell.id}] {m}"))
                result.eval_seconds = round(time.perf_counter() - start, 1)
                record["evaluate_hash"] = key
                record["cell"] = cell.id
                record["posthoc"] = cell.posthoc
                write_robustness(record, report, stem)
                store.record_robustness(run_id, record)
                _record_artifacts(cell, ev, store, run_id, log)
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


def _posthoc_label(posthoc: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in posthoc.items() if k != "defense")
    return f"{posthoc['defense']}({params})" if params else str(posthoc["defense"])


def _record_artifacts(cell: Cell, ev: dict[str, Any], store: Any, run_id: int,
                      log: Any) -> None:
    """Reliability diagrams (clean and FGSM at each eps) and a loss landscape, when the
    evaluation asks for them (``calibration: true`` / ``landscape: true``, or a mapping of
    options: ``calibration: {n: 1000, bins: 15}``, ``landscape: {n: 32, steps: 21}``)."""
    if not ev.get("calibration") and not ev.get("landscape"):
        return
    from robustact.attacks import FGSM
    from robustact.attacks.wrappers import EOT
    from robustact.eval.calibration import calibrate
    from robustact.eval.checkpoint import load_evaluation_data
    from robustact.eval.landscape import loss_landscape

    samples = int(ev.get("samples", 1))
    calibration = ev.get("calibration")
    calibration = (calibration if isinstance(calibration, dict) else {}) if calibration else None
    landscape = ev.get("landscape")
    landscape = (landscape if isinstance(landscape, dict) else {}) if landscape else None
    n_cal = int(calibration.get("n", ev.get("n", 1000))) if calibration is not None else 0
    n_land = int(landscape.get("n", 32)) if landscape is not None else 0
    # one load for both: the first max(n) images of the evaluation split
    model, x, y = load_evaluation_data(cell.train_dir, max(n_cal, n_land),
                                       split=ev.get("split", "test"),
                                       device=cell.train.device, defense=cell.posthoc)
    if calibration is not None:
        xc, yc = x[:n_cal], y[:n_cal]
        bins = int(calibration.get("bins", 15))
        store.record_artifact(run_id, "calibration", "clean",
                              calibrate(model, xc, yc, n_samples=samples, bins=bins).to_dict())
        attacked = EOT(model, samples) if samples > 1 else model
        for eps in ev["eps"]:
            x_adv = FGSM(eps=float(eps))(attacked, xc, yc).x_adv.cpu()
            store.record_artifact(run_id, "calibration", f"fgsm eps={float(eps):g}",
                                  calibrate(model, x_adv, yc, n_samples=samples,
                                            bins=bins).to_dict())
        log(f"[{cell.id}] calibration recorded")
    if landscape is not None:
        payload = loss_landscape(model, x[:n_land], y[:n_land],
                                 eps=float(landscape.get("eps", max(ev["eps"]))),
                                 steps=int(landscape.get("steps", 21)), n_samples=samples)
        store.record_artifact(run_id, "landscape", "test", payload)
        log(f"[{cell.id}] loss landscape recorded")


def run_study(study: StudyConfig, *, cells: list[str] | None = None, jobs: int = 1,
              log: Any = print) -> list[CellResult]:
    """Run the given cells (all by default), then write the tables.

    ``jobs`` > 1 runs cells in that many worker processes, each cell once the cells it needs
    (shared training, ``finetune_from: cell:ID``) are done; with GPUs each worker gets its own
    GPU (cells on ``device: auto``), on a CPU the cores are split between the workers.
    """
    chosen = [study.cell(c) for c in cells] if cells else study.cells
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        results = []
        for i, cell in enumerate(chosen, 1):
            log(f"== cell {i}/{len(chosen)}: {cell.id}")
            results.append(run_cell(study, cell, log=log))
    else:
        results = _run_parallel(study, chosen, jobs, log)
    table = results_table(study)
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "results.md").write_text(table + "\n")
    _atomic_json(study.out / "results.json", collect_results(study))
    log(f"results: {study.out / 'results.md'}")
    return results


def _job(study: StudyConfig, cell_id: str, device: str | None, threads: int,
         tune_allocator: bool) -> CellResult:
    """One cell in a worker process (lines are printed, prefixed with the cell id)."""
    import torch

    from robustact.device import tune_cpu_allocator

    if tune_allocator:  # as the parent process (the command line tunes it)
        tune_cpu_allocator()
    torch.set_num_threads(threads)
    cell = study.cell(cell_id)
    if device is not None:
        cell = dataclasses.replace(cell, train=dataclasses.replace(cell.train, device=device))
    return run_cell(study, cell, log=lambda m: print(m, flush=True))


def _run_parallel(study: StudyConfig, chosen: list[Cell], jobs: int,
                  log: Any) -> list[CellResult]:
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    import robustact.device as device_module

    gpus = list(range(torch.cuda.device_count()))
    if gpus:
        jobs = min(jobs, len(gpus))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    wanted = {c.id for c in chosen}
    pending = list(chosen)
    finished: dict[str, CellResult] = {}
    free_gpus = list(gpus)
    running: dict[Any, tuple[Cell, int | None]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        while pending or running:
            for cell in list(pending):
                # a need outside this run is assumed done (or fails with a clear message)
                ready = all(n in finished or n not in wanted for n in cell.needs)
                if not ready or len(running) >= jobs:
                    continue
                failed = [n for n in cell.needs if n in finished
                          and finished[n].status != "done"]
                pending.remove(cell)
                if failed:
                    finished[cell.id] = CellResult(cell.id, "failed",
                                                   error=f"needs failed cell {failed[0]}")
                    log(f"[{cell.id}] skipped: needs failed cell {failed[0]}")
                    continue
                gpu = free_gpus.pop(0) if gpus and cell.train.device == "auto" else None
                log(f"== cell {cell.id} started"
                    + (f" on cuda:{gpu}" if gpu is not None else ""))
                future = pool.submit(_job, study, cell.id,
                                     None if gpu is None else f"cuda:{gpu}", threads,
                                     device_module.allocator_tuned())
                running[future] = (cell, gpu)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell, gpu = running.pop(future)
                if gpu is not None:
                    free_gpus.append(gpu)
                try:
                    finished[cell.id] = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker died: record, go on
                    finished[cell.id] = CellResult(cell.id, "failed",
                                                   error=f"{type(exc).__name__}: {exc}")
                log(f"== cell {cell.id} {finished[cell.id].status}")
    return [finished[c.id] for c in chosen]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_results(study: StudyConfig) -> list[dict[str, Any]]:
    """One summary per cell: status, timings, clean and robust accuracies, the verdict."""
    rows = []
    for cell in study.cells:
        out = cell.out
        status = _read(out / "cell.json") or {"status": "not run"}
        summary = _read(cell.train_dir / "summary.json") or {}
        record = _read(out / f"{ROBUSTNESS}.json") or {}
        if status.get("status") == "done":
            stale = _stale(cell, summary, record)
            if stale:
                status = {"status": "stale", "error": stale}
        history = _read_history(cell.train_dir)
        row: dict[str, Any] = {
            "cell": cell.id, "status": status.get("status"), "error": status.get("error"),
            "model": cell.train.model, "activation": cell.train.activation,
            "act_kwargs": cell.train.act_kwargs,
            "adversarial": (cell.train.adversarial.method if cell.train.adversarial else None),
            "posthoc": _posthoc_label(cell.posthoc) if cell.posthoc else None,
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


def _stale(cell: Cell, summary: dict[str, Any], record: dict[str, Any]) -> str | None:
    """Why a finished cell's files no longer match the study file, or None."""
    if summary.get("config_hash") not in (None, cell.train.hash()):
        return "trained with other options than the study file's; rerun the cell"
    if cell.evaluate and record and record.get("evaluate_hash") != _evaluate_hash(
            cell, cell.evaluate):
        return "evaluated with other settings than the study file's; rerun the cell"
    return None


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
        if r["posthoc"]:
            training += f" + {r['posthoc']}"
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
