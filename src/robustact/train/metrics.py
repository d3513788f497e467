"""Per-epoch metrics, one row per epoch, to JSON Lines or CSV; a damaged file repairs itself.

A metrics file that holds an epoch twice (two processes once appended to one run), or a last
line cut short by a kill, is read as one row per epoch (the last record of each, the cut line
dropped) and rewritten so, atomically, with one line saying what was repaired.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustact.files import atomic_path


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """(Re)write the whole metrics file from ``rows`` atomically (used at start and on resume)."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        for i, row in enumerate(rows):
            _write_row(f, path.suffix, row, header=(i == 0))


def append_metrics(path: str | Path, row: dict[str, Any], *, first: bool) -> None:
    """Append one epoch's row (flushed and fsynced: an interrupted run keeps every epoch)."""
    path = Path(path)
    with path.open("a", newline="") as f:
        _write_row(f, path.suffix, row, header=first)
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str | Path, *,
                 log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """The rows of the metrics file ``path``, one per epoch ([] when there is none); a damaged
    file is repaired on the way (see the module docstring; ``log`` None: silently)."""
    rows, message = _read_repaired(Path(path))
    if message and log is not None:
        log(message)
    return rows


def repair_metrics(path: str | Path) -> str | None:
    """Repair the metrics file ``path`` when it is damaged; one line saying what was done,
    or None when it was whole (or missing)."""
    return _read_repaired(Path(path))[1]


def _read_repaired(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    if not path.is_file():
        return [], None
    rows, bad = _parse(path)
    kept = unique_epochs(rows)
    if not bad and len(kept) == len(rows):
        return rows, None
    what = []
    if len(kept) != len(rows):
        what.append(f"dropped {len(rows) - len(kept)} duplicate epoch rows (kept the last "
                    "record of each epoch)")
    if bad:
        what.append(f"dropped {bad} unreadable lines")
    try:
        write_metrics(path, kept)
    except OSError as exc:
        return kept, f"{path} is damaged ({'; '.join(what)}) and cannot be rewritten: {exc}"
    return kept, f"repaired {path}: {'; '.join(what)}"


def unique_epochs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch, the last record of each, in the order the epochs first appear
    (rows without an epoch are all kept)."""
    last: dict[Any, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        last[row.get("epoch", ("row", i))] = row
    return list(last.values())


def _parse(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``path`` and how many lines could not be read."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)], 0
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _write_row(f: Any, suffix: str, row: dict[str, Any], *, header: bool) -> None:
    if suffix == ".csv":
        writer = csv.DictWriter(f, fieldnames=list(row))
        if header:
            writer.writeheader()
        writer.writerow(row)
    else:
        f.write(json.dumps(row) + "\n")


def _number(text: str) -> Any:
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
