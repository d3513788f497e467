"""The results store's integrity check: ``"ok"``, or one line naming what is wrong.

- SQLite: ``PRAGMA integrity_check`` (pages, indexes) and ``PRAGMA foreign_key_check``;
- both backends: no two runs of one (study, cell), no two epoch rows of one (run, epoch), no row
  of ``epochs``, ``evaluations``, ``results``, ``diagnostics`` or ``artifacts`` without its run.
"""

from __future__ import annotations

import sqlalchemy as sa

from robustact.results import schema

CHILDREN = ("epochs", "evaluations", "results", "diagnostics", "artifacts")


def check(conn: sa.Connection) -> str:
    """``"ok"`` or the problems found, separated by ``; ``."""
    problems = _sqlite_checks(conn) if conn.dialect.name == "sqlite" else []
    problems += _duplicates(conn) + _orphans(conn)
    return "; ".join(problems) if problems else "ok"


def _sqlite_checks(conn: sa.Connection) -> list[str]:
    pages = [row[0] for row in conn.exec_driver_sql("PRAGMA integrity_check")]
    problems = [] if pages == ["ok"] else [f"integrity_check: {', '.join(pages[:3])}"]
    keys = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if keys:
        problems.append(f"{len(keys)} rows break a foreign key (first in table {keys[0][0]})")
    return problems


def _duplicates(conn: sa.Connection) -> list[str]:
    runs, epochs = schema.runs, schema.epochs
    twice = conn.execute(sa.select(runs.c.study, runs.c.cell).group_by(
        runs.c.study, runs.c.cell).having(sa.func.count() > 1)).fetchall()
    problems = [f"cell {study}/{cell} has several runs" for study, cell in twice]
    epochs_twice = conn.execute(sa.select(epochs.c.run_id, epochs.c.epoch).group_by(
        epochs.c.run_id, epochs.c.epoch).having(sa.func.count() > 1)).fetchall()
    problems += [f"run {run} has epoch {epoch} twice" for run, epoch in epochs_twice]
    return problems


def _orphans(conn: sa.Connection) -> list[str]:
    problems = []
    ids = sa.select(schema.runs.c.id)
    for name in CHILDREN:
        table = schema.metadata.tables[name]
        count = conn.execute(sa.select(sa.func.count()).select_from(table).where(
            table.c.run_id.not_in(ids))).scalar_one()
        if count:
            problems.append(f"{count} {name} rows belong to no run")
    return problems
