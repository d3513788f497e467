"""The results store: concurrent writers lose nothing, re-recording updates, exports round-trip."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from robustact.errors import ConfigError
from robustact.report.results_tables import export_markdown
from robustact.results import SCHEMA_VERSION, ResultsStore, StoreError, training_label
from robustact.results import store as store_module

CONFIG = {"model": "small_cnn", "dataset": "fashion_mnist", "activation": "kwta",
          "act_kwargs": {"ratio": 0.1}, "epochs": 3, "seed": 0,
          "adversarial": {"method": "fgsm", "eps": 0.1}}


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


def _writer(path: str, worker: int, cells: int) -> None:
    """One process of the concurrency test: many short writes, each its own transaction."""
    store_module.git_commit = lambda: None  # a spawned process does not see the monkeypatch
    store = ResultsStore(path)
    for i in range(cells):
        run_id = store.record_run("conc", f"w{worker}-{i}", config={"i": i}, config_hash="h",
                                  status="running", seed=i)
        store.record_epochs(run_id, [{"epoch": e, "loss": worker + e / 10} for e in range(4)])
        store.record_artifact(run_id, "note", "k", {"worker": worker, "i": i})
        shared = store.record_run("conc", "shared", config={"by": worker}, config_hash="s",
                                  status="done")
        store.record_artifact(shared, "note", f"w{worker}-{i}", {"i": i})
        store.record_run("conc", f"w{worker}-{i}", config={"i": i}, config_hash="h",
                         status="done", train_seconds=float(i))


def test_concurrent_writers_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "deep" / "results.sqlite")
    cells = 20
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w, cells)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]
    store = ResultsStore(path)
    runs = store.runs("conc")
    assert len(runs) == 2 * cells + 1
    assert {r["cell"] for r in runs} == {"shared"} | {f"w{w}-{i}" for w in range(2)
                                                     for i in range(cells)}
    for run in runs:
        if run["cell"] == "shared":
            assert len(store.artifacts(run["id"])) == 2 * cells  # one id, every artifact kept
            continue
        assert run["status"] == "done"
        i = int(run["cell"].split("-")[1])
        assert run["train_seconds"] == i and run["seed"] == i  # seed kept from "running"
        assert [e["epoch"] for e in store.epochs(run["id"])] == [0, 1, 2, 3]
        assert store.artifacts(run["id"], "note")[0]["payload"]["i"] == i
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_rerecording_a_cell_updates_its_row(tmp_path: Path) -> None:
    record = make_record(OUTCOMES, CLEAN)
    store = ResultsStore(tmp_path / "r.sqlite")
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


def test_robustness_record_is_stored_whole(tmp_path: Path) -> None:
    record = make_record(OUTCOMES, CLEAN)
    store = ResultsStore(tmp_path / "r.sqlite")
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


def test_exports_round_trip_the_numbers(tmp_path: Path) -> None:
    record = make_record(OUTCOMES, CLEAN)
    store = ResultsStore(tmp_path / "r.sqlite")
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


def test_schema_version_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    ResultsStore(path)  # reopening is fine
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        ResultsStore(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not usable|cannot open"):
        ResultsStore(junk)
    with pytest.raises(ConfigError, match="is a directory"):
        ResultsStore(tmp_path)


def test_training_label() -> None:
    assert training_label({}) == "standard"
    assert training_label({"adversarial": {"method": "pgd", "eps": 8 / 255}}) == \
        "pgd-AT eps=8/255"
    assert training_label({"sparsity": {"start": 0.2}}) == "standard + incremental sparsity"
    assert training_label({"sparsity": {"start": 0.2, "target": 0.1}}) == \
        "standard + incremental sparsity 0.2->0.1"


def test_a_locked_store_waits_then_gives_a_clear_error(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    waiting = ResultsStore(path, timeout=0.2)  # opening needs no lock once the schema exists
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(StoreError, match="stayed locked"):
            waiting.record_run("s", "a", config={}, config_hash=None, status="done")
        assert waiting.runs() == []  # readers are not blocked by a writer (WAL)
        threading.Timer(0.3, holder.rollback).start()  # released while the writer waits
        run_id = ResultsStore(path, timeout=10).record_run("s", "a", config={},
                                                           config_hash=None, status="done")
    finally:
        holder.close()
    assert ResultsStore(path).run("s", "a")["id"] == run_id
