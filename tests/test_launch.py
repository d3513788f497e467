"""Studies through a cluster launcher: submitit's local executor runs a 2-cell study end to
end, one job per cell, each cell trained and evaluated by a group of 2 processes, recorded in
a PostgreSQL store (the store of a study whose jobs run on many hosts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robustact.cli import main
from robustact.errors import ConfigError
from robustact.results import ResultsStore
from robustact.study import load_study
from robustact.study.launch import Launch, _in_order

TRAIN = {"model": "small_cnn", "dataset": "fashion_mnist", "epochs": 1, "batch_size": 64,
         "lr": 0.05, "train_subset": 512, "test_subset": 64, "progress": False,
         "device": "cpu"}


def _study(tmp_path: Path) -> Path:
    data = {"name": "tiny", "out": str(tmp_path / "out"), "train": TRAIN,
            "cells": [{"id": "relu", "activation": "relu"},
                      # shares relu's training: its job waits for relu's
                      {"id": "relu_sap", "activation": "relu",
                       "posthoc": {"defense": "sap", "frac": 1.0}}],
            "evaluate": {"eps": [0.1], "n": 24, "block": 8, "suite": "none", "samples": 2,
                         "attacks": ["pgd:steps=3"], "diagnose": False}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_local_launcher_runs_a_two_cell_study(tmp_path: Path, postgres_database: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _study(tmp_path)
    store_flag = ["--store", postgres_database]
    assert main(["run", str(path), "--status", *store_flag]) == 0
    assert "not submitted" in capsys.readouterr().out
    assert main(["run", str(path), "--launcher", "local", "--processes-per-cell", "2",
                 *store_flag]) == 0
    printed = capsys.readouterr().out
    assert "| relu_sap | relu | standard + sap(frac=1.0) |" in printed
    out = tmp_path / "out"
    queue = json.loads((out / "jobs" / "queue.json").read_text())
    assert set(queue) == {"relu", "relu_sap"}
    for job in queue.values():  # two tasks per job, both finished
        assert {p.name for p in (out / "jobs").glob(f"{job['job_id']}_*_result.pkl")} == {
            f"{job['job_id']}_0_result.pkl", f"{job['job_id']}_1_result.pkl"}
    assert not (out / "results.sqlite").exists()
    store = ResultsStore(postgres_database)
    runs = {r["cell"]: r for r in store.runs("tiny")}
    assert {c: r["status"] for c, r in runs.items()} == {"relu": "done", "relu_sap": "done"}
    for cell in ("relu", "relu_sap"):  # one record each, of all 24 points
        evaluation = store.evaluation(runs[cell]["id"])
        assert evaluation is not None and evaluation["n"] == 24
        assert not (out / cell / "shards").exists()
    assert len(store.results(run_id=runs["relu"]["id"])) == 3  # clean, pgd, worst case
    assert main(["run", str(path), "--status", *store_flag]) == 0
    status = capsys.readouterr().out
    assert status.count("COMPLETED") == 2 and status.count("done") == 2


def test_launch_options_and_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--launcher slurm needs --partition"):
        Launch("slurm")
    with pytest.raises(ConfigError, match="--launcher must be one of slurm, local"):
        Launch("pbs")
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM here: one line, not a traceback
    with pytest.raises(ConfigError, match="needs SLURM's sbatch, which is not on PATH"):
        Launch("slurm", partition="gpu")
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    assert Launch("slurm", partition="gpu", gpus_per_cell=4).tasks == 4
    assert Launch("local").tasks == 1
    study = load_study(_study(tmp_path))
    assert [c.id for c in _in_order(list(reversed(study.cells)))] == ["relu", "relu_sap"]
