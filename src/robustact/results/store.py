"""The results store: every training run and evaluation of a study as rows of one SQLite file.

    store = ResultsStore("runs/results.sqlite")
    run_id = store.record_run("kaf_fmnist", "relu", config=cfg.to_dict(),
                              config_hash=cfg.hash(), status="running", seed=cfg.seed)
    store.record_epochs(run_id, history)               # the rows of metrics.jsonl
    store.record_robustness(run_id, record)            # an EvalRecord (robustness.json's form)
    store.record_run("kaf_fmnist", "relu", ..., status="done", train_seconds=812.4)
    print(store.export("kaf_fmnist", format="csv"))     # markdown: robustact.report

Several processes may write to one store at once (e.g. one study runner per GPU): the file is in
WAL mode, each write is one short ``BEGIN IMMEDIATE`` transaction on a fresh connection, and a
write that finds the database locked waits (``busy_timeout``) and is retried with backoff until
``timeout`` seconds have passed. A commit is durable (``synchronous=FULL``).

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

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

import csv
import io
import json
import math
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from robustact.errors import ConfigError, RobustactError

SCHEMA_VERSION = 1
STATUSES = ("running", "done", "failed")
EXPORT_FORMATS = ("csv", "json")  # markdown: robustact.report.results_tables
CLEAN = "clean"
WORST_CASE = "worst_case"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    study TEXT NOT NULL,
    cell TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    error TEXT,
    config TEXT NOT NULL,
    config_hash TEXT,
    code_version TEXT,
    git_commit TEXT,
    seed INTEGER,
    python_version TEXT,
    torch_version TEXT,
    numpy_version TEXT,
    device TEXT,
    started TEXT,
    finished TEXT,
    train_seconds REAL,
    eval_seconds REAL,
    UNIQUE (study, cell)
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    checkpoint TEXT,
    model TEXT,
    activation TEXT,
    act_kwargs TEXT,
    dataset TEXT,
    split TEXT,
    n INTEGER,
    eps_list TEXT,
    n_samples INTEGER,
    sequential INTEGER,
    seconds REAL,
    clean_accuracy REAL,
    clean_correct TEXT,
    evaluate_hash TEXT,
    recorded TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    attack TEXT NOT NULL,
    name TEXT,
    eps REAL,
    robust_accuracy REAL NOT NULL,
    ci_low REAL,
    ci_high REAL,
    n INTEGER,
    robust INTEGER,
    attacked INTEGER,
    seconds REAL,
    queries REAL,
    params TEXT,
    details TEXT,
    correct TEXT,
    attacked_mask TEXT
);
CREATE INDEX IF NOT EXISTS results_run ON results (run_id, position);
CREATE TABLE IF NOT EXISTS diagnostics (
    run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    verdict TEXT,
    checks TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    recorded TEXT NOT NULL,
    UNIQUE (run_id, kind, key)
);
"""

T = TypeVar("T")

if TYPE_CHECKING:  # the record type loads robustact.eval (and torch): only where it is used
    from robustact.eval.record import EvalRecord


class StoreError(RobustactError):
    """The results store cannot be used (locked for too long, newer schema, not a store)."""


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


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def training_label(config: Mapping[str, Any] | None) -> str:
    """How a run was trained, from its config: ``standard``, ``fgsm-AT eps=0.1``, ...; an
    incremental k-WTA sparsity schedule adds ``+ incremental sparsity 0.2->0.1``, a post-hoc defense
    (the study runner stores it as ``config["posthoc"]``) ``+ sap(frac=1.0)``."""
    config = config or {}
    adversarial = config.get("adversarial")
    if isinstance(adversarial, Mapping) and adversarial.get("method"):
        label = f"{adversarial['method']}-AT"
        if adversarial.get("eps") is not None:
            label += f" eps={format_eps(float(adversarial['eps']))}"
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


# --- JSON helpers --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``json.dumps`` fallback: paths as strings, tensors and numpy numbers as Python values."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot store a {type(value).__name__} as JSON: {value!r}")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _bits(values: Sequence[Any] | None) -> str | None:
    if values is None:
        return None
    return "".join("1" if v else "0" for v in values)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# --- the store -----------------------------------------------------------------------------


class ResultsStore:
    """A study's runs, training histories, robustness results, diagnostics and plot data in
    one SQLite file (see the module docstring). ``timeout``: seconds a write may wait for
    other writers before :class:`StoreError` is raised."""

    def __init__(self, path: str | Path, *, timeout: float = 120.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"results store {self.path} is a directory; give a file path, "
                              "e.g. runs/results.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retry(self._set_wal)
        version = self._retry(lambda conn: conn.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION:  # the write lock only when there is something to do
            self._write(self._create_schema)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # connection handling ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _retry(self, work: Callable[[sqlite3.Connection], T], begin: str | None = None) -> T:
        """Run ``work`` on a fresh connection, inside ``begin`` ... COMMIT when given; retry
        from the start while the database is locked or busy, up to ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                conn = self._connect()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot open results store {self.path}: {exc}") from None
            try:
                if begin:
                    conn.execute(begin)
                result = work(conn)
                if begin:
                    conn.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.rollback()
                message = str(exc).lower()
                if "locked" not in message and "busy" not in message:
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"results store {self.path} stayed locked by another "
                                     f"process for {self.timeout:g} s; retry, or raise the "
                                     "timeout") from None
                time.sleep(delay * (1 + random.random()))
                delay = min(2 * delay, 0.25)
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.rollback()
                raise StoreError(f"results store {self.path} is not usable: {exc}") from None
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            finally:
                conn.close()

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._retry(work, "BEGIN IMMEDIATE")

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._retry(work, "BEGIN")  # one snapshot for all the SELECTs of ``work``

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"results store {self.path} has schema version {version}, newer "
                             f"than this robustact's {SCHEMA_VERSION}; upgrade robustact")
        if version < SCHEMA_VERSION:
            # statement by statement: executescript would commit the open transaction
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_run(self, conn: sqlite3.Connection, run_id: int) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise ConfigError(f"results store {self.path} has no run {run_id}; record the run "
                              "with record_run first")

    # writing ------------------------------------------------------------------------------

    def record_run(self, study: str, cell: str, *, config: Mapping[str, Any] | Any,
                   config_hash: str | None, status: str, error: str | None = None,
                   device: str | None = None, seed: int | None = None,
                   train_seconds: float | None = None,
                   eval_seconds: float | None = None) -> int:
        """Insert or update the run of ``cell`` in ``study``; returns its id (stable across
        re-recordings, so earlier epochs, results and artifacts stay attached).

        ``status`` ``"running"`` sets ``started`` to now and clears ``finished``; ``"done"`` or
        ``"failed"`` sets ``finished`` to now (and ``started`` too when the run was not
        recorded as running). ``error`` is stored as given (None clears it). ``device``,
        ``seed``, ``train_seconds`` and ``eval_seconds`` left at None keep the stored values
        (a cell whose training was reused keeps its training time). ``config`` is a dict (or
        an object with ``to_dict``, e.g. a TrainConfig); code and package versions are
        recorded automatically.
        """
        if status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; valid: {', '.join(STATUSES)}")
        if not study or not cell:
            raise ConfigError("a run needs a study name and a cell id")
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        config = dict(config or {})
        stamp = now()
        row = {
            "study": str(study), "cell": str(cell), "status": status, "error": error,
            "config": _dumps(config), "config_hash": config_hash, "seed": _int(seed),
            "device": device, "train_seconds": _float(train_seconds),
            "eval_seconds": _float(eval_seconds), "started": stamp,
            "finished": None if status == "running" else stamp, **environment(),
        }
        columns = ", ".join(row)
        values = ", ".join(f":{k}" for k in row)
        keep = {"device", "seed", "train_seconds", "eval_seconds"}
        updates = [f"{k} = COALESCE(excluded.{k}, runs.{k})" if k in keep else f"{k} = excluded.{k}"
                   for k in row if k not in ("study", "cell", "started")]
        updates.append("started = CASE WHEN excluded.status = 'running' "
                       "OR runs.status != 'running' THEN excluded.started ELSE runs.started END")
        sql = (f"INSERT INTO runs ({columns}) VALUES ({values}) ON CONFLICT (study, cell) "
               f"DO UPDATE SET {', '.join(updates)} RETURNING id")
        return self._write(lambda conn: int(conn.execute(sql, row).fetchone()[0]))

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
            records.append((run_id, int(epoch), _dumps(row)))
        epochs = [r[1] for r in records]
        if len(set(epochs)) != len(epochs):
            raise ConfigError(f"run {run_id}: duplicate epochs in the training history")

        def work(conn: sqlite3.Connection) -> None:
            self._check_run(conn, run_id)
            conn.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            conn.executemany("INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                             records)

        self._write(work)

    def record_robustness(self, run_id: int, record: EvalRecord | Mapping[str, Any]) -> None:
        """Store an evaluation of run ``run_id``: an :class:`~robustact.eval.record.EvalRecord`
        (or its JSON form, as in robustness.json). Replaces the run's previous evaluation,
        results and diagnostics."""
        from robustact.eval.record import EvalRecord

        record = EvalRecord.from_dict(record)
        evaluation, results = _evaluation_rows(run_id, record)
        diagnostics = record.diagnostics

        def work(conn: sqlite3.Connection) -> None:
            self._check_run(conn, run_id)
            for table in ("results", "evaluations", "diagnostics"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            conn.execute(f"INSERT INTO evaluations ({', '.join(evaluation)}) VALUES "
                         f"({', '.join(':' + k for k in evaluation)})", evaluation)
            if results:
                conn.executemany(f"INSERT INTO results ({', '.join(results[0])}) VALUES "
                                 f"({', '.join(':' + k for k in results[0])})", results)
            if diagnostics:
                conn.execute("INSERT INTO diagnostics (run_id, verdict, checks) VALUES (?, ?, ?)",
                             (run_id, diagnostics.get("verdict"),
                              _dumps(diagnostics.get("checks") or [])))

        self._write(work)

    def record_artifact(self, run_id: int, kind: str, key: str, payload: Any) -> None:
        """Store (or replace) the JSON ``payload`` of run ``run_id`` under (``kind``, ``key``),
        e.g. ``("calibration", "clean", rel.to_dict())`` or ``("landscape", "test",
        loss_landscape(...))``."""
        if not kind or not isinstance(kind, str) or not isinstance(key, str):
            raise ConfigError(f"an artifact needs a kind and a key (strings), got {kind!r}, "
                              f"{key!r}")
        text = _dumps(payload)

        def work(conn: sqlite3.Connection) -> None:
            self._check_run(conn, run_id)
            conn.execute("INSERT INTO artifacts (run_id, kind, key, payload, recorded) VALUES "
                         "(?, ?, ?, ?, ?) ON CONFLICT (run_id, kind, key) DO UPDATE SET "
                         "payload = excluded.payload, recorded = excluded.recorded",
                         (run_id, kind, key, text, now()))

        self._write(work)

    def delete_run(self, study: str, cell: str) -> bool:
        """Remove a run and everything recorded for it; returns whether it existed."""
        return self._write(lambda conn: conn.execute(
            "DELETE FROM runs WHERE study = ? AND cell = ?", (study, cell)).rowcount > 0)

    # reading ------------------------------------------------------------------------------

    def studies(self) -> list[str]:
        """The names of the studies with recorded runs, sorted."""
        return self._read(lambda conn: [r[0] for r in conn.execute(
            "SELECT DISTINCT study FROM runs ORDER BY study")])

    def runs(self, study: str | None = None) -> list[dict[str, Any]]:
        """Every run (of ``study``), in recording order; ``config`` as a dict."""
        sql = "SELECT * FROM runs" + (" WHERE study = ?" if study is not None else "")
        args = (study,) if study is not None else ()
        return self._read(lambda conn: [_run_dict(r) for r in
                                        conn.execute(sql + " ORDER BY id", args)])

    def run(self, study: str, cell: str) -> dict[str, Any] | None:
        """The run of ``cell`` in ``study``, or None."""
        row = self._read(lambda conn: conn.execute(
            "SELECT * FROM runs WHERE study = ? AND cell = ?", (study, cell)).fetchone())
        return None if row is None else _run_dict(row)

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """The training history of run ``run_id``: one metrics dict per epoch, in order."""
        return self._read(lambda conn: [json.loads(r[0]) for r in conn.execute(
            "SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))])

    def evaluation(self, run_id: int) -> dict[str, Any] | None:
        """What the last evaluation of run ``run_id`` covered (model, dataset, n, eps_list,
        clean accuracy, ...), or None when it was not evaluated."""
        row = self._read(lambda conn: conn.execute(
            "SELECT * FROM evaluations WHERE run_id = ?", (run_id,)).fetchone())
        if row is None:
            return None
        out = dict(row)
        out["act_kwargs"] = _loads(out["act_kwargs"])
        out["eps_list"] = _loads(out["eps_list"])
        out["sequential"] = None if out["sequential"] is None else bool(out["sequential"])
        return out

    def diagnostics(self, run_id: int) -> dict[str, Any] | None:
        """``{"verdict": ..., "checks": [...]}`` of run ``run_id``'s evaluation, or None."""
        row = self._read(lambda conn: conn.execute(
            "SELECT verdict, checks FROM diagnostics WHERE run_id = ?", (run_id,)).fetchone())
        return None if row is None else {"verdict": row[0], "checks": json.loads(row[1])}

    def results(self, study: str | None = None, *,
                run_id: int | None = None) -> list[dict[str, Any]]:
        """Result rows (of ``study`` and/or ``run_id``) with their run's study and cell:
        attack, eps, robust_accuracy, ci_low, ci_high, n, robust, ... in recording order."""
        where, args = [], []
        if study is not None:
            where.append("runs.study = ?")
            args.append(study)
        if run_id is not None:
            where.append("results.run_id = ?")
            args.append(run_id)
        sql = ("SELECT runs.study, runs.cell, results.* FROM results JOIN runs ON runs.id = "
               "results.run_id" + (" WHERE " + " AND ".join(where) if where else "") +
               " ORDER BY runs.id, results.position")
        rows = self._read(lambda conn: conn.execute(sql, args).fetchall())
        out = []
        for row in rows:
            item = dict(row)
            item.pop("id")
            item["params"] = _loads(item["params"])
            item["details"] = _loads(item["details"])
            out.append(item)
        return out

    def artifacts(self, run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        """Artifacts of run ``run_id`` (of ``kind``): dicts with kind, key, payload, recorded."""
        sql = "SELECT kind, key, payload, recorded FROM artifacts WHERE run_id = ?"
        args: tuple[Any, ...] = (run_id,)
        if kind is not None:
            sql += " AND kind = ?"
            args += (kind,)
        rows = self._read(lambda conn: conn.execute(sql + " ORDER BY id", args).fetchall())
        return [{"kind": r[0], "key": r[1], "payload": json.loads(r[2]), "recorded": r[3]}
                for r in rows]

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
                "act_kwargs": _dumps(config.get("act_kwargs", evaluation.get("act_kwargs"))),
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
def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["config"] = _loads(out["config"])
    return out


def _evaluation_rows(run_id: int, record: EvalRecord) -> tuple[dict[str, Any],
                                                              list[dict[str, Any]]]:
    """The ``evaluations`` row and the ``results`` rows of a robustness record."""
    evaluation = {
        "run_id": run_id, "checkpoint": _str(record.checkpoint), "model": record.model,
        "activation": record.activation, "act_kwargs": _dumps(record.act_kwargs),
        "dataset": record.dataset, "split": record.split, "n": _int(record.n),
        "eps_list": _dumps([float(e) for e in record.eps_list]),
        "n_samples": _int(record.n_samples),
        "sequential": None if record.sequential is None else int(record.sequential),
        "seconds": _float(record.seconds), "clean_accuracy": _float(record.clean_accuracy),
        "clean_correct": _bits(record.clean_correct), "evaluate_hash": record.evaluate_hash,
        "recorded": now(),
    }
    return evaluation, [_result_row(run_id, position, row, record)
                        for position, row in enumerate(record.rows)]


def _result_row(run_id: int, position: int, row: Any, record: EvalRecord) -> dict[str, Any]:
    """One ``results`` row: a row of the record with its attack's parameters and outcomes."""
    if not isinstance(row, Mapping) or "attack" not in row or "robust_accuracy" not in row:
        raise ConfigError(f"robustness row {position} lacks attack or robust_accuracy: {row!r}")
    eps = _float(row.get("eps"))
    attack = record.attack(row["attack"], eps)
    details = {k: attack[k] for k in ("gradient_free", "eot", "bpda", "loss_trace",
                                      "grad_bad_fraction", "group", "flips", "suite")
               if k in attack}
    accuracy = float(row["robust_accuracy"])
    if math.isnan(accuracy):
        raise ConfigError(f"robustness row {position} ({row['attack']}) has a NaN accuracy")
    return {
        "run_id": run_id, "position": position, "attack": str(row["attack"]),
        "name": attack.get("name", row["attack"]), "eps": eps, "robust_accuracy": accuracy,
        "ci_low": _float(row.get("ci_low")), "ci_high": _float(row.get("ci_high")),
        "n": _int(row.get("n")), "robust": _int(row.get("robust")),
        "attacked": _int(row.get("attacked")), "seconds": _float(row.get("seconds")),
        "queries": _float(row.get("queries")),
        "params": _dumps(attack["params"]) if "params" in attack else None,
        "details": _dumps(details) if details else None,
        "correct": (_bits(attack.get("correct")) if attack else
                    _bits(record.clean_correct) if row["attack"] == CLEAN else None),
        "attacked_mask": _bits(attack.get("attacked")) if attack else None,
    }


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
