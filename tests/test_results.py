"""The results store, on SQLite and on PostgreSQL alike: concurrent writers lose and duplicate
nothing, re-recording updates, exports round-trip, locks and newer schemas give clear errors."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from robustact.errors import ConfigError
from robustact.report.results_tables import export_markdown
from robustact.results import SCHEMA_VERSION, ResultsStore, StoreError, training_label
from robustact.results import store as store_module

CONFIG = {"model": "small_cnn", "dataset": "fashion_mnist", "activation": "kwta",
          "act_kwargs": {"ratio": 0.1}, "epochs": 3, "seed": 0,
          "adversarial": {"method": "fgsm", "eps": 0.1}}


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on each backend: a SQLite path (in a folder still to be made), or the URL
    of a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "deep" / "results.sqlite")
    return request.getfixturevalue("postgres_database")


def is_sqlite(url: str) -> bool:
    return "://" not in url


@pytest.fixture(autouse=True)
def no_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit lookup runs ``git``; these tests give it a fixed answer instead."""
    monkeypatch.setattr(store_module, "git_commit", lambda: "0123456789abcdef")


def make_record(correct: dict[tuple[str, float], list[int]], clean: list[int],
                verdict: str = "no sign of gradient masking") -> dict[str, Any]:
    """A robustness record shaped like robustness.json, from per-example outcomes."""
    from robustact.eval.stats import wilson_interval  # here: spawned writers skip torch

    n = len(clean)

    def row(attack: str, eps: float | None, outcome: list[int], **extra: Any) -> dict[str, Any]:
        lo, hi = wilson_interval(sum(outcome), n)
        return {"attack": attack, "eps": eps, "robust_accuracy": sum(outcome) / n, "ci_low": lo,
                "ci_high": hi, "n": n, "robust": sum(outcome), **extra}

    eps_list = sorted({eps for _, eps in correct})
    rows = [row("clean", None, clean)]
    rows += [row(label, eps, out, seconds=0.25, queries=10.0, attacked=sum(clean))
             for (label, eps), out in correct.items()]
    for eps in eps_list:
        worst = [int(all(o[i] for (_, e), o in correct.items() if e == eps) and clean[i])
                 for i in range(n)]
        rows.append(row("worst_case", eps, worst))
    return {
        "checkpoint": "runs/x", "model": "small_cnn", "activation": "kwta",
        "act_kwargs": {"ratio": 0.1}, "dataset": "fashion_mnist", "split": "test", "n": n,
        "eps_list": eps_list, "n_samples": 1, "sequential": False, "seconds": 1.5,
        "clean_accuracy": sum(clean) / n, "rows": rows,
        "attacks": [{"label": label, "name": label.split("+")[0], "eps": eps,
                     "params": {"steps": 10}, "gradient_free": False, "eot": None,
                     "bpda": False, "loss_trace": [1.0, 2.0], "grad_bad_fraction": 0.0,
                     "correct": out, "attacked": clean} for (label, eps), out in correct.items()],
        "clean_correct": clean,
        "diagnostics": {"verdict": verdict, "checks": [
            {"name": "bad_gradients", "fired": verdict != "no sign of gradient masking",
             "message": "0% of input gradients are zero", "details": {}}]},
        "evaluate_hash": "e1", "cell": "c",
    }


OUTCOMES = {("fgsm", 0.1): [1, 0, 1, 1, 0, 1, 0], ("pgd", 0.1): [1, 0, 0, 1, 0, 1, 0],
            ("fgsm", 0.2): [1, 0, 0, 0, 0, 1, 0], ("pgd", 0.2): [0, 0, 0, 0, 0, 1, 0]}
CLEAN = [1, 1, 1, 1, 0, 1, 0]


def _writer(url: str, worker: int, cells: int) -> None:
    """One process of the concurrency test: many short writes, each its own transaction; every
    worker also re-records one shared run and its evaluation."""
    store_module.git_commit = lambda: None  # a spawned process does not see the monkeypatch
    store = ResultsStore(url)
    for i in range(cells):
        run_id = store.record_run("conc", f"w{worker}-{i}", config={"i": i}, config_hash="h",
                                  status="running", seed=i)
        store.record_epochs(run_id, [{"epoch": e, "loss": worker + e / 10} for e in range(4)])
        store.record_artifact(run_id, "note", "k", {"worker": worker, "i": i})
        store.record_robustness(run_id, worker_record(worker, i))
        shared = store.record_run("conc", "shared", config={"by": worker}, config_hash="s",
                                  status="done")
        store.record_artifact(shared, "note", f"w{worker}-{i}", {"i": i})
        store.record_robustness(shared, worker_record(worker, i))
        store.record_run("conc", f"w{worker}-{i}", config={"i": i}, config_hash="h",
                         status="done", train_seconds=float(i))


def worker_record(worker: int, i: int) -> dict[str, Any]:
    """A robustness record that names its writer (checkpoint) and iteration (seconds)."""
    return {**make_record(OUTCOMES, CLEAN), "checkpoint": f"w{worker}", "seconds": float(i)}


def test_concurrent_writers_from_two_processes_lose_nothing(store_url: str) -> None:
    cells = 12
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(store_url, w, cells)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]
    store = ResultsStore(store_url)
    runs = store.runs("conc")
    assert len(runs) == 2 * cells + 1
    assert {r["cell"] for r in runs} == {"shared"} | {f"w{w}-{i}" for w in range(2)
                                                     for i in range(cells)}
    rows = len(make_record(OUTCOMES, CLEAN)["rows"])
    for run in runs:
        results = store.results(run_id=run["id"])
        assert len(results) == rows  # one whole evaluation: replaced, never appended or mixed
        assert [r["position"] for r in results] == list(range(rows))
        if run["cell"] == "shared":
            keys = [a["key"] for a in store.artifacts(run["id"])]
            assert sorted(keys) == sorted(f"w{w}-{i}" for w in range(2) for i in range(cells))
            assert store.evaluation(run["id"])["checkpoint"] in ("w0", "w1")
            continue
        assert run["status"] == "done"
        worker, i = (int(x) for x in run["cell"][1:].split("-"))
        assert run["train_seconds"] == i and run["seed"] == i  # seed kept from "running"
        assert [e["epoch"] for e in store.epochs(run["id"])] == [0, 1, 2, 3]
        assert [a["payload"] for a in store.artifacts(run["id"], "note")] == [
            {"worker": worker, "i": i}]
        evaluation = store.evaluation(run["id"])
        assert (evaluation["checkpoint"], evaluation["seconds"]) == (f"w{worker}", i)
    if is_sqlite(store_url):
        with sqlite3.connect(store_url) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    else:
        with psycopg.connect(store_url) as conn:
            assert conn.execute("SELECT version FROM robustact_schema").fetchall() == [
                (SCHEMA_VERSION,)]


def test_rerecording_a_cell_updates_its_row(store_url: str) -> None:
    record = make_record(OUTCOMES, CLEAN)
    store = ResultsStore(store_url)
    first = store.record_run("s", "kwta", config=CONFIG, config_hash="a", status="running",
                             seed=3, device="cpu")
    started = store.run("s", "kwta")["started"]
    assert store.run("s", "kwta")["finished"] is None
    store.record_epochs(first, [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}])
    store.record_robustness(first, record)
    failed = store.record_run("s", "kwta", config=CONFIG, config_hash="a", status="failed",
                              error="RuntimeError: boom", train_seconds=12.5)
    assert failed == first
    run = store.run("s", "kwta")
    assert (run["status"], run["error"], run["started"]) == ("failed", "RuntimeError: boom",
                                                              started)
    assert run["finished"] is not None and run["seed"] == 3 and run["device"] == "cpu"
    # done again (training reused: train_seconds None keeps the stored time), error cleared
    again = store.record_run("s", "kwta", config={**CONFIG, "epochs": 4}, config_hash="b",
                             status="done", eval_seconds=2.0)
    run = store.run("s", "kwta")
    assert again == first and len(store.runs()) == 1
    assert (run["status"], run["error"], run["config_hash"]) == ("done", None, "b")
    assert (run["train_seconds"], run["eval_seconds"], run["config"]["epochs"]) == (12.5, 2.0, 4)
    assert run["code_version"] and run["git_commit"] == "0123456789abcdef"
    assert run["python_version"] and run["torch_version"] and run["numpy_version"]
    # epochs and results are replaced as a whole, not appended
    store.record_epochs(first, [{"epoch": 1, "test_acc": 0.7}])
    assert store.epochs(first) == [{"epoch": 1, "test_acc": 0.7}]
    store.record_robustness(first, record)
    assert len(store.results("s")) == len(record["rows"])
    store.record_artifact(first, "calibration", "clean", {"v": 1})
    store.record_artifact(first, "calibration", "clean", {"v": 2})
    store.record_artifact(first, "landscape", "test", {"v": 3})
    assert [a["payload"] for a in store.artifacts(first, "calibration")] == [{"v": 2}]
    assert len(store.artifacts(first)) == 2
    other = store.record_run("t", "kwta", config=CONFIG, config_hash="a", status="done")
    assert other != first and store.studies() == ["s", "t"] and len(store.runs("s")) == 1
    assert store.delete_run("t", "kwta") and store.run("t", "kwta") is None


def test_robustness_record_is_stored_whole(store_url: str) -> None:
    record = make_record(OUTCOMES, CLEAN)
    store = ResultsStore(store_url)
    run_id = store.record_run("s", "kwta", config=CONFIG, config_hash="a", status="done")
    store.record_robustness(run_id, record)
    rows = store.results(run_id=run_id)
    assert [(r["attack"], r["eps"]) for r in rows] == [(r["attack"], r["eps"])
                                                       for r in record["rows"]]
    for stored, given in zip(rows, record["rows"], strict=True):
        for key in ("robust_accuracy", "ci_low", "ci_high", "n", "robust"):
            assert stored[key] == given[key]
    pgd = next(r for r in rows if r["attack"] == "pgd" and r["eps"] == 0.2)
    assert pgd["correct"] == "0000010" and pgd["params"] == {"steps": 10}
    assert pgd["details"]["loss_trace"] == [1.0, 2.0] and pgd["queries"] == 10.0
    assert rows[0]["attack"] == "clean" and rows[0]["correct"] == "1111010"
    evaluation = store.evaluation(run_id)
    assert evaluation["eps_list"] == [0.1, 0.2] and evaluation["sequential"] is False
    assert evaluation["clean_accuracy"] == record["clean_accuracy"]
    assert store.diagnostics(run_id)["verdict"] == "no sign of gradient masking"
    with pytest.raises(ConfigError, match="no run 999"):
        store.record_robustness(999, record)
    with pytest.raises(ConfigError, match="not a robustness record"):
        store.record_robustness(run_id, {"clean_accuracy": 0.5})
    with pytest.raises(ConfigError, match="unknown run status"):
        store.record_run("s", "x", config={}, config_hash=None, status="finished")


def test_exports_round_trip_the_numbers(store_url: str) -> None:
    record = make_record(OUTCOMES, CLEAN)
    store = ResultsStore(store_url)
    run_id = store.record_run("s", "kwta", config=CONFIG, config_hash="a", status="done",
                              seed=0, train_seconds=3.5)
    store.record_robustness(run_id, record)
    store.record_run("s", "broken", config={"activation": "nosuch"}, config_hash="b",
                     status="failed", error="UnknownNameError: unknown activation 'nosuch'")
    expected = {(r["attack"], r["eps"]): r for r in record["rows"]}

    rows = json.loads(store.export("s", format="json"))
    assert len(rows) == len(record["rows"]) + 1  # + the failed run's row without results
    csv_rows = list(csv.DictReader(io.StringIO(store.export("s", format="csv"))))
    assert len(csv_rows) == len(rows)
    md = export_markdown(store.table("s")).splitlines()  # rendered by the report layer
    header = [h.strip() for h in md[0].strip("|").split("|")]
    md_rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
               for line in md[2:]]
    assert len(md_rows) == len(rows)
    for j, c, m in zip(rows, csv_rows, md_rows, strict=True):
        assert j["cell"] == c["cell"] == m["cell"]
        if j["cell"] == "broken":
            assert j["status"] == "failed" and j["attack"] is None and c["attack"] == ""
            assert "UnknownNameError" in j["error"] and m["status"] == "failed"
            continue
        eps = None if c["eps"] == "" else float(c["eps"])
        given = expected[(j["attack"], j["eps"])]
        assert (c["attack"], eps) == (j["attack"], j["eps"]) == (m["attack"],
                                                                None if m["eps"] == ""
                                                                else float(m["eps"]))
        for key in ("robust_accuracy", "ci_low", "ci_high"):
            assert j[key] == float(c[key]) == given[key]  # exact in JSON and CSV
            assert abs(float(m[key]) - given[key]) < 5e-5  # 4 decimals in markdown
        assert j["n"] == int(c["n"]) == int(m["n"]) == given["n"]
        assert j["robust"] == int(c["robust"]) == int(m["robust"]) == given["robust"]
        assert j["verdict"] == c["verdict"] == m["verdict"] == "no sign of gradient masking"
        assert j["training"] == "fgsm-AT eps=0.1" and j["activation"] == "kwta"
        assert j["git_commit"] == "0123456789abcdef" and float(c["train_seconds"]) == 3.5
    with pytest.raises(ConfigError, match="unknown export format"):
        store.export("s", format="xlsx")
    with pytest.raises(ConfigError, match="unknown export format"):
        store.export("s", format="markdown")  # the store stores; report renders markdown


def test_a_newer_schema_is_refused(store_url: str) -> None:
    ResultsStore(store_url)
    ResultsStore(store_url)  # reopening is fine
    if is_sqlite(store_url):
        with sqlite3.connect(store_url) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        with psycopg.connect(store_url) as conn:
            conn.execute("UPDATE robustact_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this robustact's"):
        ResultsStore(store_url)


def test_bad_sqlite_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match=r"junk.sqlite is damaged .*move it away"):
        ResultsStore(junk)
    with pytest.raises(ConfigError, match="is a directory"):
        ResultsStore(tmp_path)


#: the SQLite schema as robustact wrote it by hand before the store moved to SQLAlchemy
OLD_SQLITE_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, study TEXT NOT NULL, cell TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')), error TEXT,
    config TEXT NOT NULL, config_hash TEXT, code_version TEXT, git_commit TEXT, seed INTEGER,
    python_version TEXT, torch_version TEXT, numpy_version TEXT, device TEXT, started TEXT,
    finished TEXT, train_seconds REAL, eval_seconds REAL, UNIQUE (study, cell));
CREATE TABLE epochs (run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch));
CREATE TABLE evaluations (run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    checkpoint TEXT, model TEXT, activation TEXT, act_kwargs TEXT, dataset TEXT, split TEXT,
    n INTEGER, eps_list TEXT, n_samples INTEGER, sequential INTEGER, seconds REAL,
    clean_accuracy REAL, clean_correct TEXT, evaluate_hash TEXT, recorded TEXT NOT NULL);
CREATE TABLE results (id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, position INTEGER NOT NULL,
    attack TEXT NOT NULL, name TEXT, eps REAL, robust_accuracy REAL NOT NULL, ci_low REAL,
    ci_high REAL, n INTEGER, robust INTEGER, attacked INTEGER, seconds REAL, queries REAL,
    params TEXT, details TEXT, correct TEXT, attacked_mask TEXT);
CREATE INDEX results_run ON results (run_id, position);
CREATE TABLE diagnostics (run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    verdict TEXT, checks TEXT NOT NULL);
CREATE TABLE artifacts (id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, kind TEXT NOT NULL,
    key TEXT NOT NULL, payload TEXT NOT NULL, recorded TEXT NOT NULL, UNIQUE (run_id, kind, key));
PRAGMA user_version = 1;
PRAGMA journal_mode = WAL;
INSERT INTO runs (id, study, cell, status, config, seed, train_seconds)
    VALUES (7, 'old', 'relu', 'done', '{"epochs": 2}', 3, 1.5);
INSERT INTO epochs VALUES (7, 0, '{"epoch": 0, "loss": 0.5}');
"""


def test_a_store_written_by_earlier_versions_opens_and_grows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE_SCHEMA)
    store = ResultsStore(f"sqlite:///{path}")  # a store URL names the same file
    run = store.run("old", "relu")
    assert (run["id"], run["seed"], run["train_seconds"], run["config"]) == (7, 3, 1.5,
                                                                             {"epochs": 2})
    assert store.epochs(7) == [{"epoch": 0, "loss": 0.5}]
    assert store.record_run("old", "relu", config={}, config_hash=None, status="done") == 7
    store.record_robustness(7, make_record(OUTCOMES, CLEAN))
    assert store.delete_run("old", "relu")
    with sqlite3.connect(path) as conn:  # the cascade of the old foreign keys still holds
        assert [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("runs", "epochs", "results", "evaluations")] == [0, 0, 0, 0]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        assert {"owner_pid", "owner_host", "heartbeat"} <= columns


def test_an_earlier_version_store_reads_read_only(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE_SCHEMA)
    store = ResultsStore(path, readonly=True)  # not migrated: read-only
    assert [r["cell"] for r in store.runs("old")] == ["relu"] and store.integrity() == "ok"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


def test_running_runs_name_their_owner_and_the_integrity_check(store_url: str) -> None:
    import os

    from robustact.results.owners import run_status

    store = ResultsStore(store_url)
    run_id = store.record_run("s", "c", config={}, config_hash="h", status="running")
    run = store.run("s", "c")
    assert run["owner_pid"] == os.getpid() and run["heartbeat"] and run_status(run) == "running"
    store.record_run("s", "c", config={}, config_hash="h", status="done")
    assert store.run("s", "c")["owner_pid"] is None and store.integrity() == "ok"
    store.record_run("s", "d", config={}, config_hash="h", status="running")
    assert not store.mark_interrupted(run_id, "gone")  # done: left as it is
    assert store.mark_interrupted(store.run("s", "d")["id"], "interrupted: gone")
    assert store.run("s", "d")["status"] == "failed"
    orphan = "INSERT INTO epochs (run_id, epoch, metrics) VALUES (999, 1, '{}')"
    if is_sqlite(store_url):
        with sqlite3.connect(store_url) as conn:  # foreign keys are off by default here
            conn.execute(orphan)
    else:
        with psycopg.connect(store_url) as conn:
            conn.execute("SET session_replication_role = replica")  # no foreign-key triggers
            conn.execute(orphan)
    assert "1 epochs rows belong to no run" in store.integrity()


def test_training_label() -> None:
    assert training_label({}) == "standard"
    assert training_label({"adversarial": {"method": "pgd", "eps": 8 / 255}}) == \
        "pgd-AT eps=8/255"
    assert training_label({"sparsity": {"start": 0.2}}) == "standard + incremental sparsity"
    assert training_label({"sparsity": {"start": 0.2, "target": 0.1}}) == \
        "standard + incremental sparsity 0.2->0.1"


class LockHolder:
    """Another writer holding the store's write lock: SQLite ``BEGIN IMMEDIATE``, PostgreSQL
    ``LOCK TABLE runs IN EXCLUSIVE MODE`` (readers still read)."""

    def __init__(self, url: str) -> None:
        if is_sqlite(url):
            self.conn: Any = sqlite3.connect(url, isolation_level=None, check_same_thread=False)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = psycopg.connect(url)
            self.conn.execute("LOCK TABLE runs IN EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


def test_a_locked_store_waits_then_gives_a_clear_error(store_url: str) -> None:
    import threading

    ResultsStore(store_url)
    waiting = ResultsStore(store_url, timeout=0.2)  # opening needs no lock once the schema exists
    holder = LockHolder(store_url)
    release = threading.Timer(0.3, holder.release)  # released while the writer waits
    try:
        with pytest.raises(StoreError, match="stayed locked"):
            waiting.record_run("s", "a", config={}, config_hash=None, status="done")
        assert waiting.runs() == []  # readers are not blocked by a writer
        release.start()
        run_id = ResultsStore(store_url, timeout=10).record_run("s", "a", config={},
                                                                config_hash=None, status="done")
    finally:
        release.cancel()
        if release.is_alive():
            release.join()
        holder.close()
    assert ResultsStore(store_url).run("s", "a")["id"] == run_id
