"""Cells in parallel worker processes: each once the cells it needs are done, one GPU each."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from robustact.study.lifecycle import CellResult, Log, run_cell


def _job(study: Any, cell_id: str, device: str | None, threads: int,
         tune_allocator: bool) -> CellResult:
    """One cell in a worker process (lines are printed, prefixed with the cell id)."""
    import torch

    from robustact.device import tune_cpu_allocator
    from robustact.study.cells import with_device, work_for
    from robustact.study.stores import study_store

    if tune_allocator:  # as the parent process (the command line tunes it)
        tune_cpu_allocator()
    torch.set_num_threads(threads)
    cell = study.cell(cell_id)
    if device is not None:
        cell = with_device(cell, device)
    return run_cell(study_store(study), study.name, work_for(cell),
                    log=lambda m: print(m, flush=True))


class _Scheduler:
    """Which cells may start: their needs are finished (a need outside this run is assumed
    done, or fails with a clear message), and a worker (and a GPU, if any) is free."""

    def __init__(self, chosen: list[Any], jobs: int, gpus: list[int]) -> None:
        self.pending, self.jobs, self.gpus = list(chosen), jobs, gpus
        self.wanted = {c.id for c in chosen}
        self.finished: dict[str, CellResult] = {}
        self.free_gpus = list(gpus)
        self.running: dict[Future, tuple[Any, int | None]] = {}

    def ready(self) -> list[Any]:
        return [c for c in list(self.pending)
                if all(n in self.finished or n not in self.wanted for n in c.needs)]

    def failed_need(self, cell: Any) -> str | None:
        return next((n for n in cell.needs if n in self.finished
                     and self.finished[n].status != "done"), None)

    def take_gpu(self, cell: Any) -> int | None:
        return self.free_gpus.pop(0) if self.gpus and cell.train.device == "auto" else None


def run_parallel(study: Any, chosen: list[Any], jobs: int, log: Log) -> list[CellResult]:
    """Run ``chosen`` cells of ``study`` in ``jobs`` processes; results in ``chosen``'s order."""
    import torch

    import robustact.device as device_module

    gpus = list(range(torch.cuda.device_count()))
    jobs = min(jobs, len(gpus)) if gpus else jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    plan = _Scheduler(chosen, jobs, gpus)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        while plan.pending or plan.running:
            for cell in plan.ready():
                if len(plan.running) >= jobs:
                    break
                plan.pending.remove(cell)
                failed = plan.failed_need(cell)
                if failed:
                    plan.finished[cell.id] = CellResult(cell.id, "failed",
                                                        error=f"needs failed cell {failed}")
                    log(f"[{cell.id}] skipped: needs failed cell {failed}")
                    continue
                gpu = plan.take_gpu(cell)
                log(f"== cell {cell.id} started" + (f" on cuda:{gpu}" if gpu is not None else ""))
                future = pool.submit(_job, study, cell.id, None if gpu is None else f"cuda:{gpu}",
                                     threads, device_module.allocator_tuned())
                plan.running[future] = (cell, gpu)
            if plan.running:
                _collect(plan, log)
    return [plan.finished[c.id] for c in chosen]


def _collect(plan: _Scheduler, log: Log) -> None:
    """Wait for at least one running cell and record how it ended."""
    done, _ = wait(plan.running, return_when=FIRST_COMPLETED)
    for future in done:
        cell, gpu = plan.running.pop(future)
        if gpu is not None:
            plan.free_gpus.append(gpu)
        try:
            plan.finished[cell.id] = future.result()
        except Exception as exc:  # noqa: BLE001 - a worker died: record, go on
            plan.finished[cell.id] = CellResult(cell.id, "failed",
                                                error=f"{type(exc).__name__}: {exc}")
        log(f"== cell {cell.id} {plan.finished[cell.id].status}")
