"""Running one transaction on a results store's database, retried while other writers hold it.

Every store operation is one short transaction (one SQLAlchemy engine per store URL and process:
a fresh SQLite connection per transaction, as the file-based store always did; a PostgreSQL
connection kept for the next transaction, one per process). A transaction that meets another
writer is rolled back and run again from the start, with backoff, until the store's ``timeout``:

- SQLite: the file is in WAL mode (readers never wait for a writer; a file of another
  application is left as it is); a write is
  ``BEGIN IMMEDIATE`` (one writer at a time) that waits ``busy_timeout``; "database is locked"
  is retried. Commits are durable (``synchronous=FULL``), foreign keys are on.
- PostgreSQL: a write is ``SERIALIZABLE`` with ``lock_timeout`` set to the time left; a
  serialization failure, deadlock, lock timeout or unique-key race (SQLSTATE 40001, 40P01, 55P03,
  23505) is retried, and so is a lost connection (and, once the store was opened, a failed
  connect: the first contact with an unreachable server fails at once). A read is one
  ``REPEATABLE READ`` snapshot. Writers on many hosts see the same outcome as writers taking
  turns: nothing lost, nothing twice (each write is an upsert or a replace, so a retried write
  whose first commit did go through changes nothing).

Errors are one line (:class:`StoreError`): which store (the URL without its password), what
failed, what to do.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from robustact.errors import RobustactError
from robustact.results.schema import APPLICATION_ID
from robustact.results.url import StoreAddress

T = TypeVar("T")
MODES = ("read", "write", "schema")
#: serialization failure, deadlock, lock timeout, unique-key race of concurrent inserts
RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03", "23505"})
CONNECT_TIMEOUT = 10  # seconds to reach a PostgreSQL server before it counts as unreachable
ISOLATION = {"read": "REPEATABLE READ", "write": "SERIALIZABLE", "schema": "READ COMMITTED"}


class StoreError(RobustactError):
    """The results store cannot be used (unreachable, locked for too long, newer schema, not a
    store)."""


def transact(address: StoreAddress, work: Callable[[sa.Connection], T], *, mode: str,
             timeout: float, opened: bool = True) -> T:
    """Run ``work(conn)`` in one transaction (``mode``: ``read``, ``write``, or ``schema`` for
    creating tables) and commit; rerun it from the start while other writers hold the store,
    up to ``timeout`` seconds. ``opened``: whether the store was reached before (a lost
    connection is then retried; at the first contact an unreachable server fails at once)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return _once(address, work, mode, deadline)
        except DBAPIError as exc:
            why = _why(exc)
            if why is None or (why == "unreachable" and not opened):
                raise StoreError(_message(address, exc, why)) from None
            if time.monotonic() > deadline:
                raise StoreError(_message(address, exc, why, timeout)) from None
        time.sleep(delay * (1 + random.random()))
        delay = min(2 * delay, 0.25)


def _once(address: StoreAddress, work: Callable[[sa.Connection], T], mode: str,
          deadline: float) -> T:
    try:
        conn = engine(address).connect()
    except DBAPIError as exc:
        exc.robustact_connect = True  # type: ignore[attr-defined]  # read by _why
        raise
    with conn:
        _begin(conn, mode, max(1, int(1000 * (deadline - time.monotonic()))))
        result = work(conn)
        conn.commit()
        return result


def _begin(conn: sa.Connection, mode: str, wait_ms: int) -> None:
    """Start the transaction: SQLite ``BEGIN [IMMEDIATE]``, PostgreSQL at the mode's isolation
    level; a lock is waited for at most ``wait_ms`` before the attempt is retried."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {wait_ms}")
        conn.exec_driver_sql("BEGIN" if mode == "read" else "BEGIN IMMEDIATE")
        return
    conn.execution_options(isolation_level=ISOLATION[mode], postgresql_readonly=mode == "read")
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")


def _why(exc: DBAPIError) -> str | None:
    """``busy`` (another writer: retry), ``unreachable`` (no new connection), ``lost`` (a
    pooled connection died, e.g. the server restarted: retry on a new one) or None (an error)."""
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return "busy" if "locked" in text or "busy" in text else None
    if getattr(orig, "sqlstate", None) in RETRY_SQLSTATES:
        return "busy"
    if getattr(exc, "robustact_connect", False):
        return "unreachable"
    return "lost" if exc.connection_invalidated else None


def _message(address: StoreAddress, exc: DBAPIError, why: str | None,
             timeout: float | None = None) -> str:
    """One line: which store, what failed, what to do."""
    where, reason = address.location, " ".join(str(exc.orig).split())
    if why == "busy":
        return (f"results store {where} stayed locked by another process for {timeout:g} s; "
                "retry, or raise the timeout")
    if address.backend == "sqlite":
        return _sqlite_message(where, reason, getattr(exc, "robustact_connect", False))
    if why in ("unreachable", "lost"):
        waited = f" (retried for {timeout:g} s)" if timeout is not None else ""
        return (f"cannot connect to results store {where}{waited}: {reason}; check the URL, "
                "that the server runs and accepts connections from this host, and that the "
                "database exists")
    return f"results store {where} is not usable: {reason}"


DAMAGED = ("not a database", "malformed", "corrupt", "disk i/o error", "no such table",
           "no such column")


def _sqlite_message(where: str, reason: str, connecting: bool) -> str:
    """One line for a SQLite store that failed: damaged, read-only, or not openable."""
    text = reason.lower()
    if any(word in text for word in DAMAGED):
        return (f"results store {where} is damaged ({reason}); move it away "
                f"(mv {where} {where}.bad) and rerun the study to rebuild it, or restore it "
                "from a backup")
    if "readonly" in text or "read-only" in text:
        return (f"results store {where} is read-only ({reason}); it can be listed and "
                "reported; to run the study, make it writable or give another --store")
    if connecting:
        return (f"cannot open results store {where}: {reason}; check that its folder exists "
                "and is readable")
    return f"results store {where} is not usable: {reason}"


def engine(address: StoreAddress) -> sa.Engine:
    """The process's engine (connection pool) for ``address``."""
    return _engine(address.url.render_as_string(hide_password=False), os.getpid())


@cache
def _engine(url: str, pid: int) -> sa.Engine:
    """One engine per URL and process (a forked child makes its own, never touching the
    parent's pooled connections)."""
    if url.startswith("sqlite"):  # a connection per transaction, closed after it (no pool):
        made = sa.create_engine(url, poolclass=NullPool)  # the file is whole when nobody writes
        read_only = "mode=ro" in url
        event.listen(made, "connect", _sqlite_read_only if read_only else _sqlite_connect)
        return made
    # one idle connection per process at most (many jobs, one server: see docs/store.md); no
    # server-side prepared statements, so that PgBouncer in transaction mode works in front
    return sa.create_engine(url, pool_size=1, max_overflow=4, connect_args={
        "connect_timeout": CONNECT_TIMEOUT, "application_name": "robustact",
        "prepare_threshold": None})


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    """Each new SQLite connection: transactions begun by us (BEGIN IMMEDIATE for writes), WAL,
    foreign keys, durable commits."""
    dbapi_conn.isolation_level = None  # sqlite3 issues no BEGIN of its own
    dbapi_conn.execute("PRAGMA foreign_keys = ON")
    dbapi_conn.execute("PRAGMA synchronous = FULL")
    if dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal" and _ours(dbapi_conn):
        dbapi_conn.execute("PRAGMA journal_mode = WAL")


def _ours(dbapi_conn: Any) -> bool:
    """Whether the file is new or robustact's (another application's file stays untouched:
    the store then refuses it)."""
    def pragma(name: str) -> int:
        return int(dbapi_conn.execute(f"PRAGMA {name}").fetchone()[0])

    return pragma("page_count") == 0 or pragma("user_version") > 0 or \
        pragma("application_id") == APPLICATION_ID


def _sqlite_read_only(dbapi_conn: Any, _record: Any) -> None:
    """Each new connection to a store opened read-only: transactions begun by us, no writes."""
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA query_only = ON")
