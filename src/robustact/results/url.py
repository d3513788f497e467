"""Where a results store lives: a file path or a store URL, turned into one :class:`StoreAddress`.

The convention is Optuna's and MLflow's storage URL (SQLAlchemy's URL format):

- ``runs/results.sqlite`` or ``sqlite:///runs/results.sqlite`` (``sqlite:////abs/path`` for an
  absolute path): a SQLite file, the embedded default;
- ``postgresql://USER@HOST:PORT/DATABASE`` or ``postgresql+psycopg://...`` (a password as
  ``USER:PASSWORD@``, or from ``PGPASSWORD`` / ``~/.pgpass``; a unix socket as
  ``postgresql://USER@/DATABASE?host=/run/postgresql``): a PostgreSQL database, through psycopg 3.

Messages show :attr:`StoreAddress.location`: the path, or the URL without its password.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from robustact.errors import ConfigError

EXAMPLES = "a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")


@dataclass(frozen=True)
class StoreAddress:
    """A results store's backend (``sqlite`` or ``postgresql``), its SQLAlchemy URL (with the
    driver), what messages show, and the SQLite file (None for PostgreSQL)."""

    backend: str
    url: URL
    location: str
    path: Path | None = None
    readonly: bool = False

    def read_only(self) -> StoreAddress:
        """This SQLite store opened read-only (``mode=ro``). Without a write-ahead log to
        read, also ``immutable``: a read-only folder cannot hold the WAL's shared-memory
        file, and nobody can write there."""
        assert self.path is not None, "PostgreSQL stores are read-only by their grants"
        wal = self.path.with_name(self.path.name + "-wal")
        query = {"mode": "ro", "uri": "true"}
        if not (wal.is_file() and wal.stat().st_size):
            query["immutable"] = "1"
        url = URL.create("sqlite", database=f"file:{quote(str(self.path.absolute()))}",
                         query=query)
        return dataclasses.replace(self, url=url, readonly=True)


def store_address(target: str | Path) -> StoreAddress:
    """The address of the store ``target`` names: a path (SQLite) or a store URL."""
    text = str(target)
    if isinstance(target, Path) or "://" not in text:
        return _sqlite(Path(text))
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"cannot read the store URL {_hide_password(text)!r}; give "
                          f"{EXAMPLES}") from None
    if url.drivername == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigError("a results store needs a file, not an in-memory database; give "
                              "sqlite:///PATH, e.g. sqlite:///runs/results.sqlite")
        return _sqlite(Path(url.database))
    if url.drivername in POSTGRES_SCHEMES:
        if not url.database:
            raise ConfigError(f"store URL {_shown(url)} names no database; give "
                              "postgresql://USER@HOST:PORT/DATABASE")
        return StoreAddress("postgresql", url.set(drivername="postgresql+psycopg"), _shown(url))
    raise ConfigError(f"unsupported results store {_shown(url)}: the store is SQLite or "
                      f"PostgreSQL (psycopg 3); give {EXAMPLES}")


def _sqlite(path: Path) -> StoreAddress:
    return StoreAddress("sqlite", URL.create("sqlite", database=str(path.absolute())), str(path),
                        path)


def _shown(url: URL) -> str:
    """The URL as messages show it: without a password, in the URL or in its query."""
    shown = URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                       url.query)
    return shown.difference_update_query(["password"]).render_as_string(hide_password=False)


def _hide_password(text: str) -> str:
    """A URL that could not be parsed, with anything between ``:`` and ``@`` dropped."""
    scheme, sep, rest = text.partition("://")
    user, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{user.partition(':')[0]}{at}{host}" if at else text
