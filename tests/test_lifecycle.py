"""The cell lifecycle over the store, the typed evaluation settings and record."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from robustact.errors import ConfigError
from robustact.eval.config import EvalConfig
from robustact.eval.record import EvalRecord
from robustact.options import short_hash
from robustact.results import ResultsStore
from robustact.study.lifecycle import CellWrapper, Trained, cell_status, run_cell


@dataclasses.dataclass
class FakeCell:
    id: str
    out: Path
    needs: list[str] = dataclasses.field(default_factory=list)
    train: Any = dataclasses.field(
        default_factory=lambda: type("T", (), {"device": "cpu", "seed": 7})())


@dataclasses.dataclass
class FakeWork(CellWrapper):
    """A cell whose training and evaluation are instant and counted."""

    train_key: str = "t1"
    eval_key: str = "e1"
    fail: bool = False
    calls: list[str] = dataclasses.field(default_factory=list)

    def run_config(self) -> dict[str, Any]:
        return {"model": "toy"}

    def train_hash(self) -> str:
        return self.train_key

    def evaluate_hashes(self) -> tuple[str, ...]:
        return (self.eval_key,)

    def train(self, log: Any) -> Trained:
        self.calls.append("train")
        if self.fail:
            raise RuntimeError("boom")
        return Trained(2.0, [{"epoch": 1, "seconds": 2.0}])

    def evaluate(self, store: ResultsStore, run_id: int, log: Any) -> float:
        self.calls.append("evaluate")
        store.record_robustness(run_id, EvalRecord(
            rows=[{"attack": "clean", "eps": None, "robust_accuracy": 0.5}], n=2,
            evaluate_hash=self.eval_key))
        return 0.1


def test_the_store_alone_says_what_is_done(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    work = FakeWork(FakeCell("a", tmp_path / "a"))
    assert cell_status(store, "s", work) == ("not run", None)
    assert run_cell(store, "s", work, log=lambda _m: None).status == "done"
    assert store.run("s", "a")["seed"] == 7 and store.run("s", "a")["config_hash"] == "t1"
    assert work.calls == ["train", "evaluate"] and cell_status(store, "s", work) == ("done", None)
    # no per-cell state file: only the cell's lock, empty while nobody holds it
    assert [p.name for p in (tmp_path / "a").glob("*")] == [".cell.lock"]
    assert (tmp_path / "a" / ".cell.lock").read_text() == ""
    times = store.run("s", "a")["train_seconds"], store.run("s", "a")["eval_seconds"]
    run_cell(store, "s", work, log=lambda _m: None)
    assert work.calls == ["train", "evaluate", "train"]  # the stored evaluation is reused
    assert (store.run("s", "a")["train_seconds"], store.run("s", "a")["eval_seconds"]) == times
    work.eval_key = "e2"
    status, why = cell_status(store, "s", work)
    assert status == "stale" and "evaluated with other settings" in why
    work.train_key = "t2"
    assert "trained with other options" in cell_status(store, "s", work)[1]


def test_a_failing_cell_is_recorded_with_its_traceback(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    work = FakeWork(FakeCell("b", tmp_path / "b"), fail=True)
    result = run_cell(store, "s", work, log=lambda _m: None)
    assert result.status == "failed" and result.error == "RuntimeError: boom"
    assert cell_status(store, "s", work) == ("failed", "RuntimeError: boom")
    assert "RuntimeError: boom" in (tmp_path / "b" / "error.log").read_text()


def test_a_held_cell_is_refused_or_waited_for_and_a_dead_owner_is_interrupted(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from robustact.errors import BusyError
    from robustact.locks import Owner, hold

    store = ResultsStore(tmp_path / "results.sqlite")
    work = FakeWork(FakeCell("c", tmp_path / "c"))
    held = rf"cell c is held by pid {os.getpid()} on host"
    # held as another process would hold it
    with hold(tmp_path / "c" / ".cell.lock", "cell c"), pytest.raises(BusyError, match=held):
        run_cell(store, "s", work, log=lambda _m: None, wait=False)
    assert work.calls == [] and cell_status(store, "s", work) == ("not run", None)
    store.record_run("s", "c", config={}, config_hash="t1", status="running")
    assert cell_status(store, "s", work) == ("running", None)  # this process: alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = Owner(int(gone.stdout), os.uname().nodename, "2026-01-01T00:00:00+00:00")
    store.record_run("s", "c", config={}, config_hash="t1", status="running", owner=dead)
    status, why = cell_status(store, "s", work)
    assert status == "interrupted" and f"pid {dead.pid}" in why and "rerun the cell" in why
    assert run_cell(store, "s", work, log=lambda _m: None).status == "done"
    assert store.run("s", "c")["owner_pid"] is None


def test_eval_config_defaults_spelling_and_hash() -> None:
    config = EvalConfig.from_dict({"eps": ["8/255", 0.1]})
    assert config.eps == (8 / 255, 0.1) and config.n == 1000 and config.suite == "adaptive"
    assert config.hash() == EvalConfig.from_dict({"eps": [8 / 255, 0.1], "n": 1000}).hash()
    assert config.hash() != EvalConfig.from_dict({"eps": [8 / 255, 0.1], "n": 500}).hash()
    assert config["eps"] == [8 / 255, 0.1] and config.get("nope", 3) == 3
    for bad, message in [({"eps": ["x/255"]}, "eps: must be a number or N/255"),
                         ({"eps": [0.1], "attacks": "fgsm"}, "attacks: must be a list"),
                         ({"eps": [0.1], "n": 0}, "n: must be >= 1, got 0"),
                         ({"eps": [0.1], "restarts": 2}, "unknown evaluate key"),
                         ({"eps": []}, "needs eps")]:
        with pytest.raises(ConfigError, match=message):
            EvalConfig.from_dict(bad, "study.yaml")


def test_old_study_folders_keep_their_evaluation_identity(tmp_path: Path) -> None:
    """The hash the runner gave an evaluation before the typed config (train hash, the
    evaluate block as written with the suite filled in) is still recognised."""
    import yaml

    from robustact.study import load_study

    evaluate = {"eps": [0.1], "n": 40, "attacks": ["fgsm"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "out": str(tmp_path / "out"),
                                    "train": {"model": "small_cnn", "epochs": 1},
                                    "cells": [{"id": "relu"}], "evaluate": evaluate}))
    cell = load_study(path).cell("relu")
    old = short_hash({"train": cell.train.hash(),
                      "evaluate": {"suite": "adaptive", **evaluate}})
    assert cell.legacy_evaluate_hash() == old and cell.evaluate_hash() != old


def test_record_round_trips_and_needs_rows() -> None:
    record = EvalRecord(rows=[{"attack": "fgsm", "eps": 0.1, "robust_accuracy": 0.4}],
                        attacks=[{"label": "fgsm", "eps": 0.1, "params": {"eps": 0.1}}],
                        model="m", n=5)
    data = record.to_dict()
    assert list(data)[:2] == ["checkpoint", "model"] and EvalRecord.from_dict(data) == record
    assert record.attack("fgsm", 0.1)["params"] == {"eps": 0.1} and record.attack("x", 0.1) == {}
    with pytest.raises(ConfigError, match="no list of rows"):
        EvalRecord.from_dict({"n": 3})
