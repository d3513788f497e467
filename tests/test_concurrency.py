"""Concurrent and interrupted runs of one study, for real: every cell ends done exactly once.

Real ``robustact run`` processes on a tiny study of three cells, two of which (``relu`` and
``relu_sap``) share one training run: two runs of the whole study at once; three ``--cell``
runs at once; a ``kill -9`` mid-cell, then ``--list``, ``--repair`` and a rerun. Each ends with
one run row per cell, one epoch row per epoch, ``metrics.jsonl`` without duplicates and the
store's integrity check ``ok``. Below them, unit tests of the locks, of the repair of a damaged
``metrics.jsonl``, and of damaged, foreign and read-only stores.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from robustact.cli import main
from robustact.errors import BusyError
from robustact.locks import hold, holder, is_held, me, owner_alive
from robustact.results import ResultsStore, StoreError
from robustact.train.metrics import read_metrics, repair_metrics

ROOT = Path(__file__).resolve().parents[1]
CELLS = ("relu", "relu_sap", "kwta")


def write_study(tmp_path: Path, epochs: int = 1) -> Path:
    data = {
        "name": "conc", "out": str(tmp_path / "out"),
        "train": {"model": "small_cnn", "dataset": "fashion_mnist", "train_subset": 64,
                  "test_subset": 32, "batch_size": 32, "epochs": epochs, "progress": False,
                  "device": "cpu"},
        "cells": [{"id": "relu", "activation": "relu"},
                  {"id": "relu_sap", "activation": "relu",
                   "posthoc": {"defense": "sap", "frac": 1.0}},
                  {"id": "kwta", "activation": "kwta", "act_kwargs": {"ratio": 0.2}}],
        "evaluate": {"eps": [0.1], "n": 8, "suite": "none", "attacks": ["fgsm"],
                     "probe_size": 8, "samples": 2, "diagnose": False},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def robustact(*args: str, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "robustact", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(*procs: subprocess.Popen) -> list[str]:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert "Traceback" not in out, out
        assert proc.returncode == 0, out
    return outputs


def assert_done_once(tmp_path: Path, epochs: int = 1) -> None:
    """One done run row per cell, one epoch row per epoch, metrics without duplicates."""
    store = ResultsStore(tmp_path / "out" / "results.sqlite")
    runs = store.runs("conc")
    assert sorted(r["cell"] for r in runs) == sorted(CELLS)
    assert {r["status"] for r in runs} == {"done"}
    for run in runs:
        assert [e["epoch"] for e in store.epochs(run["id"])] == list(range(1, epochs + 1))
        assert store.evaluation(run["id"]) is not None
        # a reused training's time is its epochs' (a tiny one rounds to 0.0, once read as None)
        assert run["train_seconds"] is not None
        assert run["owner_pid"] is None
    for folder in (tmp_path / "out").glob("*/metrics.jsonl"):
        lines = [json.loads(x) for x in folder.read_text().splitlines()]
        assert [r["epoch"] for r in lines] == list(range(1, epochs + 1)), folder
    assert store.integrity() == "ok"


def run_here(capsys: pytest.CaptureFixture, *args: str) -> str:
    """``robustact ARGS`` in this process (the steps after the concurrent ones); its output."""
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_two_runs_of_one_study_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = str(write_study(tmp_path))
    finish(robustact("run", study), robustact("run", study))
    assert_done_once(tmp_path)
    times = {r["cell"]: (r["train_seconds"], r["eval_seconds"]) for r in
             ResultsStore(tmp_path / "out" / "results.sqlite").runs("conc")}
    # a study damaged by the old bug (epochs 1, 1) repairs itself on the next run
    metrics = tmp_path / "out" / "relu" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() * 2)
    assert f"repaired {metrics}: dropped 1 duplicate" in run_here(capsys, "run", study)
    assert_done_once(tmp_path)
    rerun = {r["cell"]: (r["train_seconds"], r["eval_seconds"]) for r in
             ResultsStore(tmp_path / "out" / "results.sqlite").runs("conc")}
    assert rerun == times  # a rerun that only reused keeps the recorded times


def test_three_cell_processes_two_sharing_a_training_run(tmp_path: Path) -> None:
    study = str(write_study(tmp_path))
    outs = finish(*(robustact("run", study, "--cell", cell) for cell in CELLS))
    assert_done_once(tmp_path)
    trained = sum(len(re.findall(r"epoch +1/1 +loss", out)) for out in outs)
    assert trained == 2  # relu and relu_sap share one run: it is trained once
    assert len(list((tmp_path / "out").glob("*/metrics.jsonl"))) == 2


def test_a_killed_cell_is_interrupted_repaired_and_rerun(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    study = str(write_study(tmp_path, epochs=3))
    proc = robustact("run", study, "--cell", "kwta")
    assert proc.stdout is not None
    for line in proc.stdout:
        if "training ->" in line:
            break
    time.sleep(1.0)
    proc.kill()  # kill -9, mid-cell
    proc.wait()
    listing = run_here(capsys, "run", study, "--list")
    assert re.search(r"kwta +interrupted \(interrupted: its process \(pid \d+ on host", listing)
    (tmp_path / "out" / "kwta" / ".leftover.tmp").write_text("half")
    repaired = run_here(capsys, "run", study, "--repair")
    assert "[kwta] recorded as failed: interrupted" in repaired
    assert "leftover" in repaired and "integrity check ok" in repaired
    assert not (tmp_path / "out" / "kwta" / ".leftover.tmp").exists()
    run_here(capsys, "run", study)
    assert_done_once(tmp_path, epochs=3)


# --- locks ---------------------------------------------------------------------------------


def hold_in_child(path: Path, seconds: float) -> subprocess.Popen:
    code = ("import sys, time\nfrom robustact.locks import hold\n"
            f"with hold({str(path)!r}, 'work'):\n    print('held', flush=True)\n"
            f"    time.sleep({seconds})\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_held_lock_names_its_holder_and_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "work.lock"
    child = hold_in_child(path, 1.5)
    assert is_held(path) and holder(path).pid == child.pid
    with pytest.raises(BusyError, match=rf"work is held by pid {child.pid} on host .* since "
                                        r".*; wait for it or stop it"), hold(path, "work"):
        pass
    said: list[str] = []
    with hold(path, "work", wait=True, log=said.append) as owner:
        assert child.wait(timeout=10) == 0  # the child let go first
        assert owner.pid == os.getpid() and holder(path) == owner
    assert said and said[0].startswith("waiting: work is held by")
    assert not is_held(path) and holder(path) is None


def test_a_killed_holder_frees_its_lock_and_counts_as_dead(tmp_path: Path) -> None:
    path = tmp_path / "work.lock"
    child = hold_in_child(path, 60)
    owner = holder(path)
    assert owner is not None and owner_alive(owner)
    child.kill()
    child.wait()
    assert not owner_alive(owner)
    with hold(path, "work", wait=0.5):
        pass
    other = {"pid": 1, "host": "elsewhere", "since": "2020-01-01T00:00:00+00:00"}
    assert not owner_alive(other)  # another host: its lease expired
    assert owner_alive({**other, "since": me().since})


# --- damaged metrics -----------------------------------------------------------------------


def test_duplicate_epochs_in_metrics_are_repaired(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "loss": 1.0}, {"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.8},
            {"epoch": 2, "loss": 0.7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "lo')
    said: list[str] = []
    assert read_metrics(path, log=said.append) == [rows[1], rows[3]]
    assert said == [f"repaired {path}: dropped 2 duplicate epoch rows (kept the last record "
                    "of each epoch); dropped 1 unreadable lines"]
    assert [json.loads(x) for x in path.read_text().splitlines()] == [rows[1], rows[3]]
    assert repair_metrics(path) is None and not list(tmp_path.glob(".*.tmp"))


# --- damaged, foreign and read-only stores ---------------------------------------------------


def a_store(tmp_path: Path) -> Path:
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    run_id = store.record_run("s", "c", config={"epochs": 1}, config_hash="h", status="done")
    store.record_epochs(run_id, [{"epoch": 1, "loss": 0.5}])
    assert store.integrity() == "ok"
    return path


def test_a_damaged_store_gives_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = a_store(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET config = '{not json'")
    with pytest.raises(StoreError, match=r"results.sqlite is damaged \(config holds bad JSON"):
        ResultsStore(path).runs()
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(StoreError, match=r"truncated.sqlite is damaged .*mv .*\.bad"):
        ResultsStore(truncated).runs()


def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"app.db is another application's database \(tables "
                                         r"notes\).*give a new file"):
        ResultsStore(path)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_a_read_only_store_is_listed_but_not_written(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = a_store(tmp_path)
    os.chmod(path, 0o444)
    os.chmod(tmp_path, 0o555)
    try:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK
                            else real_access(p, mode))  # as for a user who is not root
        store = ResultsStore(path)
        assert store.readonly and [r["cell"] for r in store.runs("s")] == ["c"]
        assert store.integrity() == "ok"
        with pytest.raises(StoreError, match="results.sqlite is read-only; it can be listed"):
            store.record_run("s", "d", config={}, config_hash=None, status="done")
    finally:
        os.chmod(tmp_path, 0o755)
        os.chmod(path, 0o644)
    assert not list(tmp_path.glob("*-wal")) and not list(tmp_path.glob("*-shm"))
