"""Per-epoch metrics, one row per epoch, to JSON Lines or CSV."""

from __future__ import annotations

import csv
import json
import os
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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
