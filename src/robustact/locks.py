"""OS file locks with an owner: one process at a time on a training run, a cell or a store's schema.

    with hold(out / ".train.lock", f"training run {out}", wait=True, log=print):
        ...                                   # nobody else trains into ``out`` meanwhile

The lock is an OS lock (:mod:`filelock`: ``flock`` on Unix) on a file beside the work; the OS
drops it when its process dies, even by ``kill -9``, so a lock is never stale. While held, the
file holds its owner as JSON (pid, host, since), so that a second process can say who holds the
work: ``held by pid 123 on host h since 2026-01-01T10:00:00+00:00``. :func:`owner_alive` tells
whether an owner recorded elsewhere (a "running" row of the results store) still lives: on this
host its process exists (and is not a newer process that reuses its pid), on another its lease
(its last heartbeat) has not expired.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from robustact.errors import BusyError

#: seconds after its last heartbeat that an owner on another host counts as dead
LEASE_S = 300.0


@dataclass(frozen=True)
class Owner:
    """Who holds a piece of work: a process (pid) on a host, since an ISO 8601 UTC time."""

    pid: int
    host: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.since}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def me() -> Owner:
    """This process, as an owner from now."""
    return Owner(os.getpid(), socket.gethostname(), now_iso())


def as_owner(data: Mapping[str, Any] | None) -> Owner | None:
    """An :class:`Owner` from its JSON form, or None when ``data`` is not one."""
    try:
        return Owner(int(data["pid"]), str(data["host"]), str(data["since"]))  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def owner_alive(owner: Owner | Mapping[str, Any] | None, *, heartbeat: str | None = None,
                lease_s: float = LEASE_S) -> bool:
    """Whether ``owner`` still lives: on this host its process exists and started before it
    became the owner; on another host its ``heartbeat`` (default: ``since``) is younger than
    ``lease_s`` seconds. An unknown owner (None) is dead."""
    if owner is not None and not isinstance(owner, Owner):
        owner = as_owner(owner)
    if owner is None:
        return False
    if owner.host != socket.gethostname():
        return time.time() - _seconds(heartbeat or owner.since) < lease_s
    if not _pid_exists(owner.pid):
        return False
    state, started = _proc_stat(owner.pid)
    if state == "Z":  # killed, not yet reaped by its parent
        return False
    return started is None or started <= _seconds(owner.since) + 2  # pid reused: a newer process


def holder(path: str | Path) -> Owner | None:
    """The owner written in the lock file ``path``, or None (free, or not yet written)."""
    try:
        return as_owner(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None


def is_held(path: str | Path) -> bool:
    """Whether another process holds the lock ``path`` now."""
    if not Path(path).exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # cannot open it (read-only): nobody can write the work either
        return False
    lock.release()
    return False


def busy_message(what: str, owner: Owner | None) -> str:
    """One line: who holds ``what`` and what to do."""
    who = f"pid {owner.pid} on host {owner.host} since {owner.since}" if owner else \
        "another process"
    stop = f" (kill {owner.pid})" if owner and owner.host == socket.gethostname() else ""
    return f"{what} is held by {who}; wait for it or stop it{stop}"


@contextlib.contextmanager
def hold(path: str | Path, what: str, *, wait: bool | float = False,
         log: Callable[[str], None] | None = None) -> Iterator[Owner]:
    """Hold the lock file ``path`` for ``what`` (e.g. ``"cell relu"``) while the block runs.

    When another process holds it: ``wait`` False raises :class:`BusyError` at once, True
    waits for it (saying so through ``log``), a number waits that many seconds at most and
    then raises. Yields this process as the owner written in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    _acquire(lock, path, what, wait, log)
    owner = me()
    try:
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(owner.to_dict()))
        yield owner
    finally:
        with contextlib.suppress(OSError):
            path.write_text("")  # a free lock names no owner
        lock.release()


def _acquire(lock: FileLock, path: Path, what: str, wait: bool | float,
             log: Callable[[str], None] | None) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        pass
    message = busy_message(what, holder(path))
    if wait is False:
        raise BusyError(message)
    if log is not None:
        log(f"waiting: {message}")
    try:
        lock.acquire(timeout=-1 if wait is True else float(wait))
    except Timeout:
        raise BusyError(f"{message} (waited {float(wait):g} s)") from None


def _seconds(stamp: str) -> float:
    """An ISO 8601 time as seconds since the epoch (0 when unreadable: long ago)."""
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _proc_stat(pid: int) -> tuple[str | None, float | None]:
    """Process ``pid``'s state letter and start time (seconds since the epoch), from /proc;
    (None, None) where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None
