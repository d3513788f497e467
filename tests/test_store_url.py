"""The store URL: paths and URLs name one backend, an unreachable store is a one-line error,
``--store`` puts a study's results in PostgreSQL, a lost connection is retried."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from robustact.cli import main
from robustact.errors import ConfigError
from robustact.results import ResultsStore, StoreError, store_address
from robustact.results import store as store_module
from robustact.study.stores import (
    existing_study_store,
    open_study_store,
    study_store_target,
    with_store,
)


@pytest.fixture(autouse=True)
def no_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "git_commit", lambda: None)


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_paths_and_urls_name_one_backend(tmp_path: Path) -> None:
    plain = store_address("runs/results.sqlite")
    assert (plain.backend, plain.path, plain.location) == ("sqlite", Path("runs/results.sqlite"),
                                                           "runs/results.sqlite")
    assert store_address("sqlite:///runs/results.sqlite").path == Path("runs/results.sqlite")
    assert store_address(f"sqlite:///{tmp_path}/r.sqlite").path == tmp_path / "r.sqlite"
    for given in ("postgresql://me:secret@db:5432/studies",
                  "postgresql+psycopg://me:secret@db:5432/studies",
                  "postgres://me:secret@db:5432/studies?password=secret"):
        address = store_address(given)
        assert address.backend == "postgresql" and address.path is None
        assert address.url.drivername == "postgresql+psycopg"
        assert (address.url.username, address.url.host, address.url.port,
                address.url.database) == ("me", "db", 5432, "studies")
        assert "secret" not in address.location and "me@db:5432/studies" in address.location
    for bad, why in (("mysql://me@db/studies", "unsupported results store"),
                     ("sqlite://", "in-memory"),
                     ("postgresql://me@db:5432", "names no database"),
                     ("postgresql://me:secret@db:port/studies", "cannot read the store URL")):
        with pytest.raises(ConfigError, match=why) as caught:
            store_address(bad)
        assert "secret" not in str(caught.value)


def test_an_unreachable_store_is_one_line_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://me:secret@127.0.0.1:{closed_port()}/studies"
    with pytest.raises(StoreError, match="cannot connect to results store"):
        ResultsStore(url)
    for command in (["results", "list", str(tmp_path), "--store", url],
                    ["report", str(tmp_path), "--store", url]):
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1
        shown = url.replace(":secret", "")
        assert err.startswith(f"error: cannot connect to results store {shown}: ")
        assert "refused" in err and "check the URL" in err and "secret" not in err
    assert main(["results", "list", str(tmp_path), "--store", "mysql://me@db/x"]) == 2
    assert "unsupported results store" in capsys.readouterr().err


def test_results_and_report_read_a_postgresql_store(
        postgres_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ResultsStore(postgres_database)
    store.record_run("demo", "relu", config={"activation": "relu"}, config_hash="a",
                     status="done", device="cpu")
    store.record_run("demo", "kwta", config={"activation": "kwta"}, config_hash="b",
                     status="failed", error="boom")
    assert main(["results", "list", str(tmp_path), "--store", postgres_database]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert listed == [["relu", "done"], ["kwta", "failed"]]
    assert main(["results", "export", str(tmp_path), "--store", postgres_database,
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("demo,relu,done,")
    assert main(["report", str(tmp_path), "--store", postgres_database]) == 0
    assert "relu" in (tmp_path / "report" / "report.md").read_text()
    assert not (tmp_path / "results.sqlite").exists()  # the study folder's store is untouched


def test_a_lost_connection_is_retried(postgres_database: str) -> None:
    store = ResultsStore(postgres_database)
    run_id = store.record_run("s", "a", config={}, config_hash=None, status="running")
    with psycopg.connect(postgres_database, autocommit=True) as admin:  # e.g. a server restart
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                               "datname = current_database() AND pid != pg_backend_pid()")
        assert killed.fetchall()  # the store's pooled connection was there, and is gone
    assert store.record_run("s", "a", config={}, config_hash=None, status="done") == run_id
    assert store.run("s", "a")["status"] == "done"


def test_a_database_with_other_tables_is_refused(postgres_database: str) -> None:
    with psycopg.connect(postgres_database, autocommit=True) as admin:  # e.g. MLflow's database
        admin.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY)")
    with pytest.raises(StoreError,
                       match=r"another application's database \(tables runs\).*createdb"):
        ResultsStore(postgres_database)


@dataclass
class Study:
    name: str
    out: Path
    store: str | None = None


def test_a_study_carries_its_store(tmp_path: Path, postgres_database: str) -> None:
    study = Study("demo", tmp_path / "demo")
    assert study_store_target(study) == tmp_path / "demo" / "results.sqlite"
    assert existing_study_store(study) is None  # listing a study that never ran creates nothing
    assert not (tmp_path / "demo").exists()
    moved = with_store(study, postgres_database)
    assert study_store_target(moved) == postgres_database and study.store is None
    assert with_store(study, None) is study
    assert existing_study_store(moved).location == postgres_database
    with pytest.raises(ConfigError, match="unsupported results store"):
        with_store(study, "mysql://me@db/x")
    sqlite_file = tmp_path / "r.sqlite"
    ResultsStore(sqlite_file)
    with pytest.raises(ConfigError, match="--store names another"):
        open_study_store(str(sqlite_file), store=postgres_database)
    with pytest.raises(ConfigError, match="no results store at"):
        open_study_store(str(tmp_path), store=str(tmp_path / "missing.sqlite"))
