"""The results store: every training run and evaluation of a study as rows of one database.

    store = ResultsStore("runs/results.sqlite")        # or "postgresql://me@db-host:5432/studies"
    run_id = store.record_run("kaf_fmnist", "relu", config=cfg.to_dict(),
                              config_hash=cfg.hash(), status="running", seed=cfg.seed)
    store.record_epochs(run_id, history)               # the rows of metrics.jsonl
    store.record_robustness(run_id, record)            # an EvalRecord (robustness.json's form)
    store.record_run("kaf_fmnist", "relu", ..., status="done", train_seconds=812.4)
    print(store.export("kaf_fmnist", format="csv"))     # markdown: robustact.report

The store is a SQLite file (the embedded default: a path or ``sqlite:///PATH``) or a PostgreSQL
database (``postgresql://USER@HOST:PORT/DATABASE``), for writers on many hosts; see
:mod:`robustact.results.url`. Both hold the same tables (:mod:`robustact.results.schema`). Many
processes may write at once: each write is one short transaction, rerun while another writer
holds the store, for up to ``timeout`` seconds (:mod:`robustact.results.connection`).

- ``runs``: one row per (study, cell); re-recording a cell updates its row and keeps its id.
  ``config`` is JSON; ``code_version`` is robustact's version and ``git_commit`` the commit of
  the source tree (None outside a git checkout); python, torch and numpy versions; ISO 8601 UTC
  ``started`` / ``finished``; ``train_seconds`` / ``eval_seconds``.
- ``epochs``: (run_id, epoch) -> ``metrics`` JSON, one per row of the training history.
- ``evaluations``: one per run: what was evaluated (model, activation, dataset, split, n, ...),
  the clean accuracy and the per-example clean outcomes.
- ``results``: one per (run, attack label, eps): robust accuracy, 95% Wilson interval, counts,
  timing, queries, attack hyperparameters (JSON) and per-example outcomes. The clean accuracy
  is the row with attack ``"clean"`` and eps NULL; ``"worst_case"`` rows are the per-example
  worst case over the attacks at that eps.
- ``diagnostics``: one per run: the gradient-masking verdict and checks (JSON).
- ``artifacts``: (run_id, kind, key) -> JSON payload, e.g. ("calibration", "clean",
  Reliability.to_dict()) or ("landscape", "test", loss_landscape(...)).

Per-example outcomes (``correct``, ``attacked``) are strings of ``0`` and ``1``, one character
per evaluated example, in the order of the evaluated images.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from robustact.errors import ConfigError
from robustact.locks import Owner, hold, me
from robustact.results import integrity, schema
from robustact.results.connection import StoreError, transact
from robustact.results.rows import (
    CLEAN,
    WORST_CASE,
    BadJSON,
    as_float,
    as_int,
    dumps,
    evaluation_rows,
    loads,
    now,
    row_dict,
)
from robustact.results.schema import SCHEMA_VERSION
from robustact.results.url import store_address

__all__ = ["CLEAN", "EXPORT_COLUMNS", "SCHEMA_VERSION", "WORST_CASE", "ResultsStore",
           "StoreError", "environment", "format_eps", "git_commit", "training_label"]

STATUSES = ("running", "done", "failed")
EXPORT_FORMATS = ("csv", "json")  # markdown: robustact.report.results_tables

T = TypeVar("T")

if TYPE_CHECKING:  # the record type loads robustact.eval (and torch): only where it is used
    from robustact.eval.record import EvalRecord


# --- provenance ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout holding the robustact package (``git rev-parse HEAD``
    in the package directory), or None when git or a checkout is missing."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def environment() -> dict[str, str | None]:
    """Code and package versions recorded with every run."""
    from robustact import __version__

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)  # without importing it
        except metadata.PackageNotFoundError:
            return None

    return {"code_version": __version__, "git_commit": git_commit(),
            "python_version": sys.version.split()[0], "torch_version": version("torch"),
            "numpy_version": version("numpy")}


def training_label(config: Mapping[str, Any] | None) -> str:
    """How a run was trained, from its config: ``standard``, ``fgsm-AT eps=0.1``, ``not
    trained (external)`` (a study's ``external:`` cell), ...; an
    incremental k-WTA sparsity schedule adds ``+ incremental sparsity 0.2->0.1``, a post-hoc defense
    (the study runner stores it as ``config["posthoc"]``) ``+ sap(frac=1.0)``."""
    config = config or {}
    adversarial = config.get("adversarial")
    if isinstance(adversarial, Mapping) and adversarial.get("method"):
        label = f"{adversarial['method']}-AT"
        if adversarial.get("eps") is not None:
            label += f" eps={format_eps(float(adversarial['eps']))}"
    elif config.get("external"):  # a user's network, evaluated as given
        label = "not trained (external)"
    else:
        label = "standard"
    sparsity = config.get("sparsity")
    if sparsity:
        label += " + incremental sparsity"
        if isinstance(sparsity, Mapping) and {"start", "target"} <= set(sparsity):
            label += f" {sparsity['start']:g}->{sparsity['target']:g}"
    posthoc = config.get("posthoc")
    if isinstance(posthoc, Mapping) and posthoc.get("defense"):
        params = ", ".join(f"{k}={v}" for k, v in posthoc.items() if k != "defense")
        label += f" + {posthoc['defense']}({params})" if params else f" + {posthoc['defense']}"
    return label


def format_eps(eps: float) -> str:
    """``0.1`` -> ``"0.1"``, ``8/255`` -> ``"8/255"`` (a multiple of 1/255 that has no short
    decimal form is shown as a fraction)."""
    short = f"{eps:g}"
    steps = eps * 255
    if len(short) > 6 and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return short


# --- the store -----------------------------------------------------------------------------


class ResultsStore:
    """A study's runs, training histories, robustness results, diagnostics and plot data in
    one SQLite file or PostgreSQL database (see the module docstring). ``target``: a path or a
    store URL; ``timeout``: seconds a write may wait for other writers before
    :class:`StoreError` is raised."""

    def __init__(self, target: str | Path, *, timeout: float = 120.0,
                 readonly: bool | None = None) -> None:
        self.address = store_address(target)
        self.path = self.address.path  # the SQLite file; None for PostgreSQL
        self.location = self.address.location  # the path, or the URL without its password
        self.timeout = float(timeout)
        self.readonly = bool(readonly) if readonly is not None else _read_only(self.path)
        if self.path is not None:
            _check_file(self.path, self.readonly)
            if self.readonly:
                self.address = self.address.read_only()
        version, foreign = transact(self.address, _inspect, mode="read", timeout=self.timeout,
                                    opened=False)
        self._refuse(version, foreign)
        if version != SCHEMA_VERSION and not self.readonly:  # the write lock only when needed
            with self._schema_lock():
                self._transact(self._create_schema, "schema")
        self._run_columns = (self._transact(schema.run_columns, "read")
                             if version != SCHEMA_VERSION else list(schema.runs.c))

    def _refuse(self, version: int, foreign: list[str]) -> None:
        """Refuse a database another application made, or a newer or missing schema."""
        if foreign:
            fix = ("give a new file, e.g. runs/results.sqlite" if self.path is not None
                   else "give an empty database (createdb NAME)")
            raise StoreError(
                f"results store {self.location} is another application's database (tables "
                f"{', '.join(foreign[:5])}), not robustact's; robustact does not write into it: "
                f"{fix}")
        if version > SCHEMA_VERSION:
            raise StoreError(f"results store {self.location} has schema version {version}, "
                             f"newer than this robustact's {SCHEMA_VERSION}; upgrade robustact")
        if self.readonly and version == 0:
            raise StoreError(f"results store {self.location} is read-only and holds no "
                             "results yet; run the study into a writable store first")

    def _schema_lock(self) -> Any:
        """The OS lock of a SQLite store's schema creation (PostgreSQL takes an advisory
        lock in the transaction instead)."""
        if self.path is None:
            return contextlib.nullcontext()
        return hold(self.path.with_name(f".{self.path.name}.lock"),
                    f"creating the tables of results store {self.location}", wait=self.timeout)

    def __repr__(self) -> str:
        return f"ResultsStore({self.location!r})"

    def __str__(self) -> str:
        return self.location

    # transactions -------------------------------------------------------------------------

    def _transact(self, work: Callable[[sa.Connection], T], mode: str) -> T:
        try:
            return transact(self.address, work, mode=mode, timeout=self.timeout)
        except BadJSON as exc:
            raise StoreError(
                f"results store {self.location} is damaged ({exc}); move it away "
                f"(mv {self.location} {self.location}.bad) and rerun the study to rebuild it, "
                "or restore it from a backup") from None

    def _write(self, work: Callable[[sa.Connection], T]) -> T:
        if self.readonly:
            raise StoreError(f"results store {self.location} is read-only; it can be listed "
                             "and reported; to record runs, make it writable or give another "
                             "--store")
        return self._transact(work, "write")

    def _read(self, work: Callable[[sa.Connection], T]) -> T:
        return self._transact(work, "read")  # one snapshot for all the SELECTs of ``work``

    def _create_schema(self, conn: sa.Connection) -> None:
        if conn.dialect.name != "sqlite":  # first writers of a new database take turns
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(schema.SCHEMA_LOCK)))
        version = schema.schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(f"results store {self.location} has schema version {version}, "
                             f"newer than this robustact's {SCHEMA_VERSION}; upgrade robustact")
        if version == 0 and conn.dialect.name != "sqlite" and schema.foreign_tables(conn):
            raise StoreError(f"results store {self.location} already has tables named "
                             f"{', '.join(schema.foreign_tables(conn))} that robustact did not "
                             "create; give an empty database (createdb NAME)")
        if version < SCHEMA_VERSION:
            schema.create_schema(conn)

    def _check_run(self, conn: sa.Connection, run_id: int) -> None:
        runs = schema.runs
        if conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise ConfigError(f"results store {self.location} has no run {run_id}; record the "
                              "run with record_run first")

    # writing ------------------------------------------------------------------------------

    def record_run(self, study: str, cell: str, *, config: Mapping[str, Any] | Any,
                   config_hash: str | None, status: str, error: str | None = None,
                   device: str | None = None, seed: int | None = None,
                   train_seconds: float | None = None,
                   eval_seconds: float | None = None, owner: Owner | None = None) -> int:
        """Insert or update the run of ``cell`` in ``study``; returns its id (stable across
        re-recordings, so earlier epochs, results and artifacts stay attached).

        ``status`` ``"running"`` sets ``started`` to now and clears ``finished``; ``"done"`` or
        ``"failed"`` sets ``finished`` to now (and ``started`` too when the run was not
        recorded as running). ``error`` is stored as given (None clears it). ``device``,
        ``seed``, ``train_seconds`` and ``eval_seconds`` left at None keep the stored values
        (a cell whose training was reused keeps its training time). ``config`` is a dict (or
        an object with ``to_dict``, e.g. a TrainConfig); code and package versions are
        recorded automatically. A running run records its ``owner`` (default: this process)
        and a heartbeat (:meth:`heartbeat`); a finished one clears them.
        """
        if status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; valid: {', '.join(STATUSES)}")
        if not study or not cell:
            raise ConfigError("a run needs a study name and a cell id")
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        stamp = now()
        row = {
            "study": str(study), "cell": str(cell), "status": status, "error": error,
            "config": dumps(dict(config or {})), "config_hash": config_hash,
            "seed": as_int(seed), "device": device, "train_seconds": as_float(train_seconds),
            "eval_seconds": as_float(eval_seconds), "started": stamp,
            "finished": None if status == "running" else stamp, **environment(),
            **_owner_columns(owner or me() if status == "running" else None, stamp),
        }
        return self._write(lambda conn: int(conn.execute(_upsert_run(conn, row)).scalar_one()))

    def record_epochs(self, run_id: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the training history of run ``run_id`` by ``rows`` (the rows of
        metrics.jsonl: dicts with an ``epoch`` and any metrics; without ``epoch`` a row's
        position counts from 0)."""
        records = []
        for i, row in enumerate(rows):
            row = dict(row)
            epoch = row.get("epoch", i)
            if isinstance(epoch, bool) or not isinstance(epoch, int | float) or epoch != int(epoch):
                raise ConfigError(f"epoch row {i} has a non-integer epoch {epoch!r}")
            records.append({"run_id": run_id, "epoch": int(epoch), "metrics": dumps(row)})
        if len({r["epoch"] for r in records}) != len(records):
            raise ConfigError(f"run {run_id}: duplicate epochs in the training history")

        def work(conn: sa.Connection) -> None:
            self._check_run(conn, run_id)
            conn.execute(schema.epochs.delete().where(schema.epochs.c.run_id == run_id))
            if records:
                conn.execute(schema.epochs.insert(), records)

        self._write(work)

    def record_robustness(self, run_id: int, record: EvalRecord | Mapping[str, Any]) -> None:
        """Store an evaluation of run ``run_id``: an :class:`~robustact.eval.record.EvalRecord`
        (or its JSON form, as in robustness.json). Replaces the run's previous evaluation,
        results and diagnostics."""
        from robustact.eval.record import EvalRecord

        record = EvalRecord.from_dict(record)
        evaluation, results = evaluation_rows(run_id, record)
        diagnostics = record.diagnostics

        def work(conn: sa.Connection) -> None:
            self._check_run(conn, run_id)
            for table in (schema.results, schema.evaluations, schema.diagnostics):
                conn.execute(table.delete().where(table.c.run_id == run_id))
            conn.execute(schema.evaluations.insert(), evaluation)
            if results:
                conn.execute(schema.results.insert(), results)
            if diagnostics:
                conn.execute(schema.diagnostics.insert(), {
                    "run_id": run_id, "verdict": diagnostics.get("verdict"),
                    "checks": dumps(diagnostics.get("checks") or [])})

        self._write(work)

    def record_artifact(self, run_id: int, kind: str, key: str, payload: Any) -> None:
        """Store (or replace) the JSON ``payload`` of run ``run_id`` under (``kind``, ``key``),
        e.g. ``("calibration", "clean", rel.to_dict())`` or ``("landscape", "test",
        loss_landscape(...))``."""
        if not kind or not isinstance(kind, str) or not isinstance(key, str):
            raise ConfigError(f"an artifact needs a kind and a key (strings), got {kind!r}, "
                              f"{key!r}")
        row = {"run_id": run_id, "kind": kind, "key": key, "payload": dumps(payload),
               "recorded": now()}

        def work(conn: sa.Connection) -> None:
            self._check_run(conn, run_id)
            insert = schema.upsert(conn, schema.artifacts).values(row)
            conn.execute(insert.on_conflict_do_update(
                index_elements=["run_id", "kind", "key"],
                set_={"payload": insert.excluded.payload, "recorded": insert.excluded.recorded}))

        self._write(work)

    def delete_run(self, study: str, cell: str) -> bool:
        """Remove a run and everything recorded for it; returns whether it existed."""
        return self._write(lambda conn: conn.execute(schema.runs.delete().where(
            schema.runs.c.study == study, schema.runs.c.cell == cell)).rowcount > 0)

    def heartbeat(self, run_id: int) -> None:
        """Renew the lease of running run ``run_id`` owned by this process."""
        runs = schema.runs
        self._write(lambda conn: conn.execute(runs.update().where(
            runs.c.id == run_id, runs.c.status == "running", runs.c.owner_pid == os.getpid(),
        ).values(heartbeat=now())))

    def mark_interrupted(self, run_id: int, error: str) -> bool:
        """Record running run ``run_id`` as failed with ``error`` (its owner died); returns
        whether it was still running."""
        runs = schema.runs
        return self._write(lambda conn: conn.execute(runs.update().where(
            runs.c.id == run_id, runs.c.status == "running").values(
            status="failed", error=error, finished=now(), owner_pid=None, owner_host=None,
            heartbeat=None)).rowcount > 0)

    def integrity(self) -> str:
        """``"ok"``, or one line naming what is wrong (:mod:`robustact.results.integrity`)."""
        return self._read(integrity.check)

    # reading ------------------------------------------------------------------------------

    def studies(self) -> list[str]:
        """The names of the studies with recorded runs, sorted."""
        return self._read(lambda conn: list(conn.execute(
            sa.select(schema.runs.c.study).distinct().order_by(schema.runs.c.study)).scalars()))

    def runs(self, study: str | None = None) -> list[dict[str, Any]]:
        """Every run (of ``study``), in recording order; ``config`` as a dict."""
        runs = schema.runs
        query = sa.select(*self._run_columns).order_by(runs.c.id)
        if study is not None:
            query = query.where(runs.c.study == study)
        return self._read(lambda conn: [row_dict(r, "config") for r in conn.execute(query)])

    def run(self, study: str, cell: str) -> dict[str, Any] | None:
        """The run of ``cell`` in ``study``, or None."""
        runs = schema.runs
        row = self._read(lambda conn: conn.execute(
            sa.select(*self._run_columns).where(runs.c.study == study,
                                                runs.c.cell == cell)).first())
        return None if row is None else row_dict(row, "config")

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """The training history of run ``run_id``: one metrics dict per epoch, in order."""
        table = schema.epochs
        query = sa.select(table.c.metrics).where(table.c.run_id == run_id).order_by(table.c.epoch)
        return self._read(lambda conn: [loads(m, "epochs.metrics")
                                        for m in conn.execute(query).scalars()])

    def evaluation(self, run_id: int) -> dict[str, Any] | None:
        """What the last evaluation of run ``run_id`` covered (model, dataset, n, eps_list,
        clean accuracy, ...), or None when it was not evaluated."""
        row = self._read(lambda conn: conn.execute(
            sa.select(schema.evaluations).where(schema.evaluations.c.run_id == run_id)).first())
        if row is None:
            return None
        out = row_dict(row, "act_kwargs", "eps_list")
        out["sequential"] = None if out["sequential"] is None else bool(out["sequential"])
        return out

    def diagnostics(self, run_id: int) -> dict[str, Any] | None:
        """``{"verdict": ..., "checks": [...]}`` of run ``run_id``'s evaluation, or None."""
        table = schema.diagnostics
        row = self._read(lambda conn: conn.execute(
            sa.select(table.c.verdict, table.c.checks).where(table.c.run_id == run_id)).first())
        return None if row is None else {"verdict": row[0],
                                          "checks": loads(row[1], "diagnostics.checks")}

    def results(self, study: str | None = None, *,
                run_id: int | None = None) -> list[dict[str, Any]]:
        """Result rows (of ``study`` and/or ``run_id``) with their run's study and cell:
        attack, eps, robust_accuracy, ci_low, ci_high, n, robust, ... in recording order."""
        table, runs = schema.results, schema.runs
        query = (sa.select(runs.c.study, runs.c.cell, *[c for c in table.c if c.name != "id"])
                 .join_from(table, runs, runs.c.id == table.c.run_id)
                 .order_by(runs.c.id, table.c.position))
        if study is not None:
            query = query.where(runs.c.study == study)
        if run_id is not None:
            query = query.where(table.c.run_id == run_id)
        return self._read(lambda conn: [row_dict(r, "params", "details")
                                        for r in conn.execute(query)])

    def artifacts(self, run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        """Artifacts of run ``run_id`` (of ``kind``): dicts with kind, key, payload, recorded."""
        table = schema.artifacts
        query = (sa.select(table.c.kind, table.c.key, table.c.payload, table.c.recorded)
                 .where(table.c.run_id == run_id).order_by(table.c.id))
        if kind is not None:
            query = query.where(table.c.kind == kind)
        return self._read(lambda conn: [row_dict(r, "payload") for r in conn.execute(query)])

    # export -------------------------------------------------------------------------------

    def table(self, study: str | None = None) -> list[dict[str, Any]]:
        """The flat export table: one row per run x attack x eps (clean and worst-case rows
        included; a run without results gets one row with an empty attack). Columns:
        :data:`EXPORT_COLUMNS`."""
        out = []
        for run in self.runs(study):
            evaluation = self.evaluation(run["id"]) or {}
            verdict = (self.diagnostics(run["id"]) or {}).get("verdict")
            config = run["config"] or {}
            history = self.epochs(run["id"])
            base = {
                "study": run["study"], "cell": run["cell"], "status": run["status"],
                "error": run["error"],
                "model": config.get("model") or evaluation.get("model"),
                "activation": config.get("activation") or evaluation.get("activation"),
                "act_kwargs": dumps(config.get("act_kwargs", evaluation.get("act_kwargs"))),
                "dataset": config.get("dataset") or evaluation.get("dataset"),
                "training": training_label(config),
                "epochs": len(history) or config.get("epochs"),
                "seed": run["seed"], "config_hash": run["config_hash"],
                "code_version": run["code_version"], "git_commit": run["git_commit"],
                "device": run["device"], "train_seconds": run["train_seconds"],
                "eval_seconds": run["eval_seconds"], "split": evaluation.get("split"),
                "sequential": evaluation.get("sequential"),
                "n_samples": evaluation.get("n_samples"),
                "clean_accuracy": evaluation.get("clean_accuracy"),
            }
            results = self.results(run_id=run["id"])
            for result in results or [{}]:
                row = dict(base)
                for key in ("attack", "eps", "robust_accuracy", "ci_low", "ci_high", "n",
                            "robust", "seconds", "queries"):
                    row[key] = result.get(key)
                row["verdict"] = verdict
                out.append({k: row[k] for k in EXPORT_COLUMNS})
        return out

    def export(self, study: str | None = None, format: str = "csv") -> str:
        """The export table (see :meth:`table`) as ``csv`` or ``json`` text, every number
        exact (the markdown rendering is :func:`robustact.report.results_tables.export_markdown`).
        """
        if format not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {format!r}; valid: "
                              f"{', '.join(EXPORT_FORMATS)}")
        rows = self.table(study)
        if format == "json":
            return json.dumps(rows, indent=1) + "\n"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()


EXPORT_COLUMNS = [
    "study", "cell", "status", "error", "model", "activation", "act_kwargs", "dataset",
    "training", "epochs", "seed", "config_hash", "code_version", "git_commit", "device",
    "train_seconds", "eval_seconds", "split", "sequential", "n_samples", "clean_accuracy",
    "attack", "eps", "robust_accuracy", "ci_low", "ci_high", "n", "robust", "seconds", "queries",
    "verdict",
]


def _read_only(path: Path | None) -> bool:
    """Whether a SQLite store can only be read: its file or its folder is not writable."""
    if path is None or not path.is_file():
        return False
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def _check_file(path: Path, readonly: bool) -> None:
    """A SQLite store's path: not a folder; its folder made (unless read-only)."""
    if path.is_dir():
        raise ConfigError(f"results store {path} is a directory; give a file path, "
                          "e.g. runs/results.sqlite")
    if readonly:
        if not path.is_file():
            raise StoreError(f"no results store at {path}; run the study first")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder of results store {path}: "
                         f"{exc.strerror or exc}; give a writable --store or --out") from None


def _inspect(conn: sa.Connection) -> tuple[int, list[str]]:
    """The stored schema version and the tables that make the database foreign."""
    return schema.schema_version(conn), schema.foreign_tables(conn)


def _owner_columns(owner: Owner | None, stamp: str) -> dict[str, Any]:
    if owner is None:
        return {"owner_pid": None, "owner_host": None, "heartbeat": None}
    return {"owner_pid": owner.pid, "owner_host": owner.host, "heartbeat": stamp}


def _upsert_run(conn: sa.Connection, row: dict[str, Any]) -> Any:
    """INSERT the run, or UPDATE the (study, cell) row already there, RETURNING its id:
    ``device``, ``seed`` and the timings given as None keep the stored values, ``started`` is
    kept while a running run is recorded again as done or failed."""
    runs = schema.runs
    insert = schema.upsert(conn, runs).values(row)
    new = insert.excluded
    keep = {"device", "seed", "train_seconds", "eval_seconds"}
    updates = {k: sa.func.coalesce(new[k], runs.c[k]) if k in keep else new[k]
               for k in row if k not in ("study", "cell", "started")}
    updates["started"] = sa.case((sa.or_(new.status == "running", runs.c.status != "running"),
                                  new.started), else_=runs.c.started)
    return insert.on_conflict_do_update(index_elements=["study", "cell"],
                                        set_=updates).returning(runs.c.id)
