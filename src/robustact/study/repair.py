"""Repair a study (``run FILE --repair``): damaged metrics, dead "running" cells, .tmp files.

    for line in repair_study(study):
        print(line)

For every cell that no live process holds (its OS lock is free):

- its training history (``metrics.jsonl``) keeps one row per epoch, the last record of each
  (two processes once appended to one run: epochs 1, 1, 2, 2), and loses a line cut by a kill;
- a run the store records as ``running`` whose process is gone is recorded as failed
  ("interrupted"), so that listings say so and the next run resumes it;
- ``.*.tmp`` files left by interrupted atomic writes are removed.

Then the store's integrity check runs. Each thing done (or left, and why) is one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robustact.locks import busy_message, holder, is_held
from robustact.results.owners import interrupted_why, owner_lives
from robustact.study.cells import work_for
from robustact.study.lifecycle import CELL_LOCK
from robustact.study.stores import existing_study_store
from robustact.train.loop import RUN_LOCK
from robustact.train.metrics import repair_metrics


def repair_study(study: Any) -> list[str]:
    """Repair every cell of ``study`` no live process holds; one line per thing done."""
    store = existing_study_store(study)
    lines: list[str] = []
    for cell in study.cells:
        lines += list(_repair_cell(store, study.name, cell))
    if store is not None:
        lines.append(f"results store {store}: integrity check {store.integrity()}")
    return lines or ["nothing to repair"]


def _repair_cell(store: Any, study: str, cell: Any) -> Iterator[str]:
    work = work_for(cell)
    train_dir = Path(getattr(cell, "train_dir", None) or work.out)
    for lock, what in ((work.out / CELL_LOCK, f"cell {cell.id}"),
                       (train_dir / RUN_LOCK, f"training run {train_dir}")):
        if is_held(lock):
            yield f"[{cell.id}] left as it is: {busy_message(what, holder(lock))}"
            return
    metrics = getattr(getattr(cell, "train", None), "metrics_file", "metrics.jsonl")
    message = repair_metrics(train_dir / metrics)
    if message:
        yield f"[{cell.id}] {message}"
    for folder in dict.fromkeys([work.out, train_dir]):
        for tmp in sorted(folder.rglob(".*.tmp")) if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
            yield f"[{cell.id}] removed the leftover {tmp}"
    run = store.run(study, cell.id) if store is not None else None
    if run is not None and run["status"] == "running" and not owner_lives(run):
        why = interrupted_why(run)
        if store.mark_interrupted(run["id"], why):
            yield f"[{cell.id}] recorded as failed: {why}"
