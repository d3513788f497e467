"""Atomic file writes: a file is either its old content or its new one, never half of either.

    with atomic_path("runs/x/checkpoint.pt") as tmp:   # write tmp any way you like
        torch.save(state, tmp)
    write_atomic("runs/x/report.md", text)
    write_json("runs/x/robustness.json", record)

The temporary file lives beside the target (same file system, so the rename is atomic), is
fsynced before the rename, and is removed when the write fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path``; on a clean exit it is fsynced and renamed over
    ``path`` (``mode``: its permission bits, e.g. 0o644), otherwise deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns the path."""
    with atomic_path(path, mode=0o644) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    """``data`` as JSON (paths and other objects as strings), written atomically."""
    return write_atomic(path, json.dumps(data, indent=indent, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
