"""One cell's lifecycle, for image and RL cells alike: train or reuse, evaluate or reuse, record.

A cell kind implements :class:`CellWork` (:mod:`robustact.study.image_cell`,
:mod:`robustact.study.rl_cell`); :func:`run_cell` drives it and records every step in the
study's results store, the single source of truth: :func:`cell_status` (listings and stale
detection) reads the store only. Files in the cell's folder are artifacts (checkpoints,
training history) or exports (robustness.json), never state.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from robustact.distributed import DistContext, current
from robustact.errors import BusyError
from robustact.locks import hold
from robustact.results import ResultsStore
from robustact.results.owners import INTERRUPTED, interrupted_why, owner_lives

Log = Callable[[str], None]
CELL_LOCK = ".cell.lock"
HEARTBEAT_S = 60.0  # seconds between renewals of a running cell's lease


@dataclass
class Trained:
    """What training (or reusing a trained run) left: its seconds and per-epoch history;
    ``reused``: nothing was trained (the run existed)."""

    seconds: float | None
    history: list[dict[str, Any]]
    reused: bool = False


@dataclass
class CellResult:
    id: str
    status: str  # "done" or "failed"
    train_seconds: float | None = None
    eval_seconds: float | None = None
    error: str | None = None


class CellWork(Protocol):
    """What the lifecycle needs of a cell kind."""

    id: str
    needs: list[str]

    @property
    def out(self) -> Path: ...
    def device(self) -> str: ...
    def seed(self) -> int | None: ...
    def run_config(self) -> dict[str, Any]: ...
    def train_hash(self) -> str: ...
    def evaluate_hashes(self) -> tuple[str, ...]: ...
    def train(self, log: Log) -> Trained: ...
    def evaluate(self, store: ResultsStore | None, run_id: int | None, log: Log) -> float:
        """Evaluate and record (``store`` None: a follower process of a sharded
        evaluation, which records nothing)."""


@dataclass
class CellWrapper:
    """What every cell kind reads the same way off its study-file cell: id, needs, folder,
    device. Image and RL cells subclass it."""

    cell: Any

    @property
    def id(self) -> str:
        return self.cell.id

    @property
    def needs(self) -> list[str]:
        return self.cell.needs

    @property
    def out(self) -> Path:
        return self.cell.out

    def device(self) -> str:
        return self.cell.train.device

    def seed(self) -> int | None:
        return self.cell.train.seed


def run_cell(store: ResultsStore | None, study: str, cell: CellWork, *, log: Log = print,
             ctx: DistContext | None = None, wait: bool = True) -> CellResult:
    """Train and evaluate one cell, reusing what the store says is done; a failure is
    recorded (and its traceback written to ``error.log``), not raised.

    One process at a time runs a cell: it holds the OS lock ``<cell out>/.cell.lock``. When
    another process holds it, ``wait`` False raises :class:`BusyError` (one line naming the
    holder); True waits, then ends at once when the holder left the cell done.

    In a process group (``ctx``: torchrun, or a cluster job of several tasks) every process
    calls it: the cell trains with DDP and its evaluation is sharded; rank 0 alone holds the
    store and decides, the others follow (``store`` None). When rank 0's cell fails, it ends
    the group so that the others stop waiting for it."""
    ctx = ctx or current()
    if not ctx.is_main:
        return _follow(cell, ctx)
    assert store is not None, "rank 0 records the cell: give it the store"
    lock, what = cell.out / CELL_LOCK, f"cell {cell.id}"
    try:
        with hold(lock, what):
            return _run_held(store, study, cell, log, ctx)
    except BusyError as exc:
        if not wait:
            raise
        log(f"[{cell.id}] waiting: {exc}")
    with hold(lock, what, wait=True):
        run = store.run(study, cell.id)
        if run is not None and cell_status(store, study, cell)[0] == "done":
            log(f"[{cell.id}] done by another process meanwhile (results store)")
            return CellResult(cell.id, "done", run.get("train_seconds"), run.get("eval_seconds"))
        return _run_held(store, study, cell, log, ctx)


def _run_held(store: ResultsStore, study: str, cell: CellWork, log: Log,
              ctx: DistContext) -> CellResult:
    """:func:`run_cell` once this process holds the cell: record it running (with this
    process as its owner, renewing its lease), train, evaluate, record how it ended. Times of
    work only reused are not re-recorded (the stored ones stay)."""
    result = CellResult(cell.id, "failed")
    kw = dict(config=cell.run_config(), config_hash=cell.train_hash(),
              device=resolved_device(cell.device()), seed=cell.seed())
    previous = store.run(study, cell.id)
    run_id = store.record_run(study, cell.id, status="running", **kw)
    trained = None
    with _heartbeat(store, run_id):
        try:
            trained = cell.train(lambda m: log(f"[{cell.id}] {m}"))
            result.train_seconds = trained.seconds
            store.record_epochs(run_id, trained.history)
            result.eval_seconds = _evaluate(store, run_id, cell, previous, log, ctx)
            result.status = "done"
        except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the study
            result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log(f"[{cell.id}] FAILED: {result.error}")
            cell.out.mkdir(parents=True, exist_ok=True)
            (cell.out / "error.log").write_text(traceback.format_exc())
    reused = _training_reused(trained, previous, cell)
    store.record_run(study, cell.id, status=result.status, error=result.error,
                     train_seconds=None if reused else result.train_seconds,
                     eval_seconds=result.eval_seconds, **kw)
    if reused:
        result.train_seconds = previous.get("train_seconds") if previous else None
    if result.status != "done" and ctx.enabled:
        ctx.abort()  # the other processes wait in a collective for this one
    return result


def _training_reused(trained: Trained | None, previous: dict[str, Any] | None,
                     cell: CellWork) -> bool:
    """Whether the cell's training was reused, not run, and the store has its time: the
    cell says so, or the store holds it done with the same training configuration."""
    if trained is None or previous is None or previous.get("train_seconds") is None:
        return False
    return trained.reused or (previous["status"] == "done"
                              and previous.get("config_hash") == cell.train_hash())


@contextlib.contextmanager
def _heartbeat(store: ResultsStore, run_id: int) -> Iterator[None]:
    """Renew the running run's lease every :data:`HEARTBEAT_S` seconds meanwhile (owners on
    other hosts count as dead once it expires: :data:`robustact.locks.LEASE_S`)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat only shortens the lease
                store.heartbeat(run_id)

    thread = threading.Thread(target=beat, name="robustact-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _follow(cell: CellWork, ctx: DistContext) -> CellResult:
    """A process other than rank 0 of a group: train and evaluate as rank 0 decides,
    silently; rank 0 records. Raises when rank 0 gave up (its cell failed)."""
    def quiet(message: str) -> None:
        pass

    cell.train(quiet)
    if cell.evaluate_hashes() and not ctx.broadcast(None):
        cell.evaluate(None, None, quiet)
    return CellResult(cell.id, "done")


def _evaluate(store: ResultsStore, run_id: int, cell: CellWork,
              previous: dict[str, Any] | None, log: Log, ctx: DistContext) -> float | None:
    """Evaluate, or reuse the stored evaluation when it has the cell's evaluation hash."""
    hashes = cell.evaluate_hashes()
    if not hashes:
        return None
    if ctx.broadcast(stored_evaluate_hash(store, run_id) in hashes):
        log(f"[{cell.id}] evaluated earlier (results store)")
        return (previous or {}).get("eval_seconds")
    start = time.perf_counter()
    cell.evaluate(store, run_id, lambda m: log(f"[{cell.id}] {m}"))
    return round(time.perf_counter() - start, 1)


def stored_evaluate_hash(store: ResultsStore, run_id: int) -> str | None:
    return (store.evaluation(run_id) or {}).get("evaluate_hash")


def cell_status(store: ResultsStore | None, study: str, cell: CellWork) -> tuple[str, str | None]:
    """(status, why) of a cell from the store: ``not run``, ``running``, ``interrupted``
    (recorded running, but its process is gone), ``failed``, ``done`` or ``stale`` (done,
    but with other options than the study file's)."""
    run = store.run(study, cell.id) if store is not None else None
    if run is None:
        return "not run", None
    if run["status"] == "running" and not owner_lives(run):
        return INTERRUPTED, interrupted_why(run)
    if run["status"] != "done":
        return run["status"], run.get("error")
    if run["config_hash"] not in (None, cell.train_hash()):
        return "stale", "trained with other options than the study file's; rerun the cell"
    hashes = cell.evaluate_hashes()
    if hashes and stored_evaluate_hash(store, run["id"]) not in hashes:
        return "stale", "evaluated with other settings than the study file's; rerun the cell"
    return "done", None


def resolved_device(name: str) -> str | None:
    """The device a cell's ``device`` option selects (``"auto"`` -> ``"cuda:0"``, ...), or
    None when it cannot be used (the cell's training then fails with the reason)."""
    from robustact.device import select_device

    try:
        return str(select_device(name))
    except Exception:  # noqa: BLE001 - an unusable device fails the cell's training instead
        return None
