"""The results store's tables, one SQLAlchemy definition for SQLite and PostgreSQL, and its version.

Schema version :data:`SCHEMA_VERSION`. SQLite keeps it in ``PRAGMA user_version`` (the file format
of every robustact version so far), PostgreSQL in the one-row table ``robustact_schema``.

- ``runs``: one row per (study, cell); re-recording a cell updates its row and keeps its id.
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

SCHEMA_VERSION = 1
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
    """Tables with robustact's names in a database robustact did not create (version 0)."""
    names = set(sa.inspect(conn).get_table_names())
    return sorted(t.name for t in TABLES if t.name in names)


def create_schema(conn: sa.Connection) -> None:
    """Create the tables and record :data:`SCHEMA_VERSION` (inside the caller's transaction)."""
    metadata.create_all(conn, checkfirst=True)
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    version_table.create(conn, checkfirst=True)
    conn.execute(version_table.delete())
    conn.execute(version_table.insert().values(version=SCHEMA_VERSION))
