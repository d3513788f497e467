"""Atomic file writes, and plain words for why a file could not be written.

    with atomic_path("runs/x/checkpoint.pt") as tmp:   # write tmp any way you like
        torch.save(state, tmp)
    write_atomic("runs/x/report.md", text)
    write_json("runs/x/robustness.json", record)
    check_writable("runs/x")                          # before the expensive part
    save_elsewhere("robustness-1.json", write)        # when runs/x cannot take it
    describe_os_error(exc)   # "runs/x: No space left on device (ENOSPC); free some space ..."

A file is either its old content or its new one, never half of either: the temporary file lives
beside the target (same file system, so the rename is atomic), is fsynced before the rename, and
is removed whenever the write fails (a full disk, a failed fsync or rename) or is interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: what to do about an OS error, by errno name
_HINTS = {
    "ENOSPC": "free some space or write to another disk",
    "EDQUOT": "free some space (disk quota exceeded) or write to another disk",
    "EFBIG": "the file is larger than allowed here (ulimit -f or the file system); write "
             "to another disk",
    "EROFS": "the file system is read-only; choose a writable folder",
    "EACCES": "you may not write there; choose a folder you own",
    "EPERM": "you may not write there; choose a folder you own",
    "ENOTDIR": "a file stands where a folder is needed; choose another path or move that file",
    "EEXIST": "a file stands where a folder is needed; choose another path or move that file",
    "EISDIR": "a folder stands where a file is needed; give a file name",
    "ENOENT": "check the path",
}


def describe_os_error(exc: OSError) -> str:
    """One line: the path(s), the OS reason with its errno name, and what to do."""
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    where = f"{paths}: " if paths else ""
    code = f" ({name})" if name else ""
    hint = _HINTS.get(name, "check the path and the disk")
    return f"{where}{reason}{code}; {hint}"


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) if need be and prove a file can be written in it;
    raises the OSError that says why not (read-only, a file in the way, a full disk)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".robustact-probe-", suffix=".tmp", dir=folder)
    try:
        os.write(fd, b"probe\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        _remove(Path(name))
    return folder


def unsaved_dirs() -> list[Path]:
    """Where a computed result goes when its own folder cannot take it, in order:
    ``$XDG_CACHE_HOME/robustact/unsaved`` (default ``~/.cache/...``), then the temp folder."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return [cache / "robustact" / "unsaved", Path(tempfile.gettempdir()) / "robustact-unsaved"]


def save_elsewhere(name: str, write: Callable[[Path], object]) -> Path | None:
    """``write(folder / name)`` into the first of :func:`unsaved_dirs` where it succeeds;
    that path, or None when none could hold it."""
    for folder in unsaved_dirs():
        try:
            write(folder / name)
        except OSError:
            continue
        return folder / name
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path``; on a clean exit it is fsynced and renamed over
    ``path`` (``mode``: its permission bits, e.g. 0o644), otherwise deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    """Delete ``path`` if it is still there; never raises (cleanup must not hide the error
    that made it necessary)."""
    with contextlib.suppress(OSError):
        path.unlink()


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
