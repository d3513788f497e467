"""Run a study: every chosen cell through the lifecycle, in order or in parallel, then exports.

Each cell works in ``<study out>/<cell id>/`` (training artifacts, the robustness.json / .csv
exports, error.log) and is recorded in the study's results store,
``<study out>/results.sqlite`` (:mod:`robustact.results`), the single source of truth:
listings, stale detection, ``results.md`` / ``results.json`` and ``robustact report`` read it.
Re-running skips what is done: a finished training run with the same configuration hash is
reused, an interrupted one is resumed, an evaluation the store holds with the same settings is
reused. Processes running one study at once share its work: a cell and a training run are each
held by one process at a time (an OS lock, :mod:`robustact.locks`); a cell another process
holds is left for the end and then waited for, so that every cell ends done once. A cell that
fails is recorded as failed and the others go on. Image studies
(:mod:`robustact.study.config`) and RL studies (:mod:`robustact.study.rl_config`) run alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustact.distributed import current, init_distributed
from robustact.errors import BusyError, ConfigError
from robustact.files import write_atomic, write_json
from robustact.study.cells import work_for
from robustact.study.lifecycle import CellResult, Log, cell_status, run_cell
from robustact.study.stores import existing_study_store, study_store

__all__ = ["CellResult", "cell_statuses", "run_rl_study", "run_study", "write_exports"]


def cell_statuses(study: Any) -> list[tuple[str, str, str | None]]:
    """(cell id, status, why) of every cell, from the store (see
    :func:`robustact.study.lifecycle.cell_status`)."""
    store = existing_study_store(study)
    return [(c.id, *cell_status(store, study.name, work_for(c))) for c in study.cells]


def run_study(study: Any, *, cells: list[str] | None = None, jobs: int = 1,
              log: Log = print) -> list[CellResult]:
    """Run the given cells (all by default), then write the exports.

    ``jobs`` > 1 runs cells in that many worker processes, each cell once the cells it needs
    (shared training, ``finetune_from: cell:ID``) are done; with GPUs each worker gets its own
    GPU (cells on ``device: auto``), on a CPU the cores are split between the workers. In a
    process group (torchrun, a cluster job: :func:`run_in_group`) the processes run each cell
    together instead.
    """
    chosen = [study.cell(c) for c in cells] if cells else study.cells
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if current().enabled:
        return _run_together(study, chosen, jobs, log)
    if jobs == 1:
        results = _run_in_turn(study_store(study), study, chosen, log)
    else:
        from robustact.study.parallel import run_parallel

        results = run_parallel(study, chosen, jobs, log)
    write_exports(study)
    log(f"results: {Path(study.out) / 'results.md'}")
    return results


def _run_in_turn(store: Any, study: Any, chosen: list[Any], log: Log) -> list[CellResult]:
    """Each cell in order; a cell another process holds (and each cell needing it) is left
    for the end, with one line naming the holder, and then waited for."""
    results: dict[str, CellResult] = {}
    later: list[Any] = []
    for i, cell in enumerate(chosen, 1):
        if any(n in {c.id for c in later} for n in cell.needs):
            later.append(cell)
            continue
        log(f"== cell {i}/{len(chosen)}: {cell.id}")
        try:
            results[cell.id] = run_cell(store, study.name, work_for(cell), log=log, wait=False)
        except BusyError as exc:
            log(f"[{cell.id}] left for later: {exc}")
            later.append(cell)
    for cell in later:
        log(f"== cell {cell.id} (after the process that held it)")
        results[cell.id] = run_cell(store, study.name, work_for(cell), log=log, wait=True)
    return [results[c.id] for c in chosen]


def run_in_group(study: Any, cell_id: str, log: Log = print) -> CellResult:
    """One cell by every process of the group this process's environment describes
    (torchrun's or a cluster job's variables; a single process without them)."""
    ctx, _ = init_distributed("auto")
    try:
        return run_study(study, cells=[cell_id], log=log)[0]
    finally:
        ctx.close()


def _run_together(study: Any, chosen: list[Any], jobs: int, log: Log) -> list[CellResult]:
    """Each cell by all processes of the group, one device each: DDP training, sharded
    evaluation; rank 0 records and writes the exports. The first failed cell ends the run
    (rank 0 leaves the group)."""
    from robustact.study.cells import with_device
    from robustact.study.rl_config import RLStudy

    ctx = current()
    if jobs != 1 or isinstance(study, RLStudy):
        raise ConfigError("in a process group (torchrun) run an image study with --jobs 1: "
                          "the processes share each cell")
    _, device = init_distributed("auto")  # this process's device in the running group
    store = study_store(study) if ctx.is_main else None
    results = []
    for cell in chosen:
        if ctx.is_main:
            log(f"== cell {cell.id} on {ctx.world_size} processes")
        work = work_for(with_device(cell, str(device)))
        results.append(run_cell(store, study.name, work, log=log, ctx=ctx))
        if results[-1].status != "done":
            break
    if ctx.is_main:
        write_exports(study)
    return results


def run_rl_study(study: Any, *, cells: list[str] | None = None,
                 log: Log = print) -> dict[str, str]:
    """:func:`run_study` for an RL study; returns each cell's status."""
    return {r.id: r.status for r in run_study(study, cells=cells, log=log)}


def write_exports(study: Any) -> None:
    """``results.md`` (the study's table) and, for image studies, ``results.json`` (one
    summary per cell), rendered from the store."""
    from robustact.report.results_tables import study_results_table
    from robustact.report.rl import rl_results_table
    from robustact.study.summary import collect_results

    out = Path(study.out)
    if _is_rl(study):
        write_atomic(out / "results.md", rl_results_table(study_store(study),
                                                          study.name) + "\n")
        return
    rows = collect_results(study)
    write_atomic(out / "results.md", study_results_table(study.name, rows) + "\n")
    write_json(out / "results.json", rows)


def _is_rl(study: Any) -> bool:
    from robustact.study.config import StudyConfig

    return not isinstance(study, StudyConfig)
