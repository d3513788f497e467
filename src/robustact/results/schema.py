"""The results store's tables, one SQLAlchemy definition for SQLite and PostgreSQL, and its version.

Schema version :data:`SCHEMA_VERSION`. SQLite keeps it in ``PRAGMA user_version`` (the file format
of every robustact version so far) and marks the file as robustact's with ``PRAGMA
application_id`` (:data:`APPLICATION_ID`); PostgreSQL keeps it in the one-row table
``robustact_schema``. Version 1 stores are migrated in place (version 2 added the owner columns).
A database that holds other tables and no robustact version is foreign (:func:`foreign_tables`):
robustact refuses to write into it.

- ``runs``: one row per (study, cell); re-recording a cell updates its row and keeps its id.
  A running run names its owner (``owner_pid``, ``owner_host``) and its last ``heartbeat``.
- ``epochs``: (run_id, epoch) -> ``metrics`` JSON, one per row of the training history.
- ``evaluations``: one per run: what was evaluated, the clean accuracy and outcomes.
- ``results``: one per (run, attack label, eps), in the record's order (``position``).
- ``diagnostics``: one per run: the gradient-masking verdict and checks (JSON).
- ``artifacts``: (run_id, kind, key) -> JSON payload.

JSON columns and per-example outcome strings are text; times are ISO 8601 UTC text. Integers are
SQLite's ``INTEGER`` (``runs.id`` stays the rowid) and PostgreSQL's ``BIGINT``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

SCHEMA_VERSION = 2
APPLICATION_ID = 0x52424354  # "RBCT": PRAGMA application_id of robustact's SQLite files
VERSION_TABLE = "robustact_schema"
#: held while a PostgreSQL store creates its tables, so that two first writers do not race
SCHEMA_LOCK = 0x726F627573746163  # "robustac"

INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TEXT = sa.Text
REAL = sa.Double().with_variant(sa.REAL(), "sqlite")  # double precision on PostgreSQL
metadata = sa.MetaData()


def _run_id(primary: bool = False) -> sa.Column:
    return sa.Column("run_id", INT, sa.ForeignKey("runs.id", ondelete="CASCADE"),
                     primary_key=primary, nullable=False)


runs = sa.Table(
    "runs", metadata,
    sa.Column("id", INT, primary_key=True),
    sa.Column("study", TEXT, nullable=False), sa.Column("cell", TEXT, nullable=False),
    sa.Column("status", TEXT, sa.CheckConstraint("status IN ('running', 'done', 'failed')"),
              nullable=False),
    sa.Column("error", TEXT), sa.Column("config", TEXT, nullable=False),
    sa.Column("config_hash", TEXT), sa.Column("code_version", TEXT),
    sa.Column("git_commit", TEXT), sa.Column("seed", INT), sa.Column("python_version", TEXT),
    sa.Column("torch_version", TEXT), sa.Column("numpy_version", TEXT),
    sa.Column("device", TEXT), sa.Column("started", TEXT), sa.Column("finished", TEXT),
    sa.Column("train_seconds", REAL), sa.Column("eval_seconds", REAL),
    sa.Column("owner_pid", INT), sa.Column("owner_host", TEXT), sa.Column("heartbeat", TEXT),
    sa.UniqueConstraint("study", "cell"),
)
epochs = sa.Table(
    "epochs", metadata, _run_id(primary=True),
    sa.Column("epoch", INT, primary_key=True), sa.Column("metrics", TEXT, nullable=False),
)
evaluations = sa.Table(
    "evaluations", metadata, _run_id(primary=True),
    *[sa.Column(name, TEXT) for name in ("checkpoint", "model", "activation", "act_kwargs",
                                         "dataset", "split")],
    sa.Column("n", INT), sa.Column("eps_list", TEXT), sa.Column("n_samples", INT),
    sa.Column("sequential", INT), sa.Column("seconds", REAL), sa.Column("clean_accuracy", REAL),
    sa.Column("clean_correct", TEXT), sa.Column("evaluate_hash", TEXT),
    sa.Column("recorded", TEXT, nullable=False),
)
results = sa.Table(
    "results", metadata,
    sa.Column("id", INT, primary_key=True), _run_id(),
    sa.Column("position", INT, nullable=False), sa.Column("attack", TEXT, nullable=False),
    sa.Column("name", TEXT), sa.Column("eps", REAL),
    sa.Column("robust_accuracy", REAL, nullable=False),
    sa.Column("ci_low", REAL), sa.Column("ci_high", REAL), sa.Column("n", INT),
    sa.Column("robust", INT), sa.Column("attacked", INT), sa.Column("seconds", REAL),
    sa.Column("queries", REAL), sa.Column("params", TEXT), sa.Column("details", TEXT),
    sa.Column("correct", TEXT), sa.Column("attacked_mask", TEXT),
    sa.Index("results_run", "run_id", "position"),
)
diagnostics = sa.Table(
    "diagnostics", metadata, _run_id(primary=True),
    sa.Column("verdict", TEXT), sa.Column("checks", TEXT, nullable=False),
)
artifacts = sa.Table(
    "artifacts", metadata,
    sa.Column("id", INT, primary_key=True), _run_id(),
    sa.Column("kind", TEXT, nullable=False), sa.Column("key", TEXT, nullable=False),
    sa.Column("payload", TEXT, nullable=False), sa.Column("recorded", TEXT, nullable=False),
    sa.UniqueConstraint("run_id", "kind", "key"),
)
version_table = sa.Table(  # PostgreSQL only: SQLite has PRAGMA user_version
    VERSION_TABLE, sa.MetaData(), sa.Column("version", sa.Integer, nullable=False),
)
TABLES = [runs, epochs, evaluations, results, diagnostics, artifacts]
#: columns added after version 1, with their types
ADDED_COLUMNS = {"owner_pid": "BIGINT", "owner_host": "TEXT", "heartbeat": "TEXT"}


def upsert(conn: sa.Connection, table: sa.Table) -> Any:
    """``INSERT INTO table`` of the connection's dialect, which has ``ON CONFLICT`` (SQLite and
    PostgreSQL spell it alike: ``.on_conflict_do_update(...)``, ``.excluded``)."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(table)


def schema_version(conn: sa.Connection) -> int:
    """The stored schema version; 0 for an empty database."""
    if conn.dialect.name == "sqlite":
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return 0
    return int(conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar() or 0)


def foreign_tables(conn: sa.Connection) -> list[str]:
    """The tables that make the database another application's, not robustact's: on
    PostgreSQL, tables with robustact's names while no version is recorded; on SQLite, any
    table of a file without robustact's version, or of a file another application marked."""
    names = set(sa.inspect(conn).get_table_names())
    if conn.dialect.name != "sqlite":
        return [] if schema_version(conn) else sorted(t.name for t in TABLES if t.name in names)
    app = int(conn.exec_driver_sql("PRAGMA application_id").scalar_one())
    if app not in (0, APPLICATION_ID) or (schema_version(conn) == 0 and names):
        return sorted(names) or ["(none)"]
    if schema_version(conn) and app == 0 and "runs" not in names:  # a version, not ours
        return sorted(names) or ["(none)"]
    return []


def run_columns(conn: sa.Connection) -> list[sa.Column]:
    """The columns of ``runs`` this database has (a version 1 store lacks the newer ones)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("runs")}
    return [c for c in runs.c if c.name in have]


def create_schema(conn: sa.Connection) -> None:
    """Create the tables, or add the columns a version 1 store lacks, and record
    :data:`SCHEMA_VERSION` (inside the caller's transaction)."""
    metadata.create_all(conn, checkfirst=True)
    have = {c["name"] for c in sa.inspect(conn).get_columns("runs")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
        return
    version_table.create(conn, checkfirst=True)
    conn.execute(version_table.delete())
    conn.execute(version_table.insert().values(version=SCHEMA_VERSION))
