"""Studies: cells from a grid and a list, train + evaluate, skip finished work, failed cells."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from robustact.cli import main
from robustact.errors import ConfigError
from robustact.study import load_study, run_study

TRAIN = {"model": "small_cnn", "dataset": "fashion_mnist", "epochs": 1, "batch_size": 64,
         "lr": 0.05, "train_subset": 512, "test_subset": 64, "progress": False,
         "device": "cpu"}


def write_study(tmp_path: Path, **extra: object) -> Path:
    data = {"name": "tiny", "out": str(tmp_path / "out"), "train": TRAIN,
            "grid": {"activation": ["relu"], "seed": [0]},
            "cells": [{"id": "kwta", "activation": "kwta", "act_kwargs": {"ratio": 0.2}},
                      {"id": "broken", "activation": "relu", "seed": 1,
                       "finetune_from": str(tmp_path / "missing.pt")}],
            "evaluate": {"eps": [0.1], "n": 40, "suite": "none",
                         "attacks": ["fgsm", "pgd:steps=3"], "probe_size": 40}}
    data.update(extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_runs_cells_skips_finished_work_and_records_failures(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    assert [c.id for c in study.cells] == ["relu-0", "kwta", "broken"]
    assert study.cell("kwta").train.act_kwargs == {"ratio": 0.2}
    logs: list[str] = []
    results = run_study(study, log=logs.append)
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert "missing.pt not found" in results[2].error  # the cells before it are kept
    for cell in ("relu-0", "kwta"):
        record = json.loads((tmp_path / "out" / cell / "robustness.json").read_text())
        assert record["n"] == 40 and record["diagnostics"]["verdict"]
        assert {r["attack"] for r in record["rows"]} >= {"fgsm", "pgd", "worst_case"}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| relu-0 | relu | standard |" in table and "failed: CheckpointError" in table
    ckpt = tmp_path / "out" / "relu-0" / "checkpoint.pt"
    robustness = tmp_path / "out" / "relu-0" / "robustness.json"
    stamps = ckpt.stat().st_mtime_ns, robustness.stat().st_mtime_ns
    logs.clear()
    run_study(study, cells=["relu-0"], log=logs.append)  # nothing to redo
    assert (ckpt.stat().st_mtime_ns, robustness.stat().st_mtime_ns) == stamps
    assert any("trained earlier" in m for m in logs) and any("evaluated earlier" in m
                                                             for m in logs)
    # the results store has every cell; the CLI lists, exports and reports from it
    from robustact.results import ResultsStore

    store = ResultsStore(tmp_path / "out" / "results.sqlite")
    runs = {r["cell"]: r for r in store.runs("tiny")}
    assert {c: r["status"] for c, r in runs.items()} == {"relu-0": "done", "kwta": "done",
                                                          "broken": "failed"}
    assert len(store.epochs(runs["kwta"]["id"])) == 1
    pgd = [r for r in store.results(run_id=runs["kwta"]["id"]) if r["attack"] == "pgd"]
    record = json.loads((tmp_path / "out" / "kwta" / "robustness.json").read_text())
    assert pgd[0]["robust_accuracy"] == next(r["robust_accuracy"] for r in record["rows"]
                                             if r["attack"] == "pgd")
    study_file = str(tmp_path / "study.yaml")
    assert main(["results", "list", study_file]) == 0
    assert main(["results", "export", str(tmp_path / "out"), "--format", "csv"]) == 0
    assert main(["report", study_file]) == 0
    html = (tmp_path / "out" / "report" / "report.html").read_text()
    assert "<svg" in html and "kwta" in html and "failed" in html.lower()
    # a changed evaluation suite marks the cell stale, then re-evaluates without retraining
    from robustact.study.summary import collect_results

    def status(cell_id: str) -> tuple[str, str | None]:
        row = next(r for r in collect_results(study) if r["cell"] == cell_id)
        return row["status"], row["error"]

    assert status("relu-0") == ("done", None)
    cell = study.cell("relu-0")
    cell.evaluate = dataclasses.replace(cell.evaluate, attacks=("fgsm",))
    assert status("relu-0")[0] == "stale" and "evaluated with other" in status("relu-0")[1]
    run_study(study, cells=["relu-0"], log=logs.append)
    assert ckpt.stat().st_mtime_ns == stamps[0] and robustness.stat().st_mtime_ns != stamps[1]
    assert status("relu-0") == ("done", None)
    # changed training options: stale, and a rerun says how to retrain instead of mixing runs
    cell.train = dataclasses.replace(cell.train, lr=0.01)
    assert status("relu-0")[0] == "stale" and "trained with other" in status("relu-0")[1]
    (result,) = run_study(study, cells=["relu-0"], log=logs.append)
    assert result.status == "failed" and "move it away" in result.error
    assert ckpt.stat().st_mtime_ns == stamps[0]


def test_study_resumes_an_interrupted_cell(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, grid={"activation": ["relu"]}, cells=[],
                                   train={**TRAIN, "epochs": 2}))
    cell = study.cell("relu")
    from robustact.train import train

    class Stop(Exception):
        pass

    def stop_after_epoch_1(message: str) -> None:
        if message.startswith("epoch   1/2"):
            raise Stop

    with pytest.raises(Stop):
        train(cell.train, log=stop_after_epoch_1)
    logs: list[str] = []
    (result,) = run_study(study, log=logs.append)
    assert result.status == "done"
    assert any("resuming" in m for m in logs)
    metrics = (tmp_path / "out" / "relu" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]


def test_merge_is_recursive() -> None:
    from robustact.study.config import merge

    base = {"adversarial": {"method": "fgsm", "eps": 0.1}, "lr": 0.1}
    assert merge(base, {"adversarial": {"eps": 0.2}, "lr": 0.05}) == {
        "adversarial": {"method": "fgsm", "eps": 0.2}, "lr": 0.05}
    assert base["adversarial"]["eps"] == 0.1  # the shared options are not modified


def test_study_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a grid or a list of cells"):
        load_study(write_study(tmp_path, grid={}, cells=[]))
    with pytest.raises(ConfigError, match="duplicate cell"):
        load_study(write_study(tmp_path, cells=[{"id": "kwta"}, {"id": "kwta"}]))
    with pytest.raises(ConfigError, match="cell relu-0: unknown training option"):
        load_study(write_study(tmp_path, train={**TRAIN, "epoch": 3}, cells=[]))
    with pytest.raises(ConfigError, match="unknown evaluate key"):
        load_study(write_study(tmp_path, evaluate={"eps": [0.1], "attacks": ["fgsm"],
                                                   "restarts": 2}))
    with pytest.raises(ConfigError, match="study.yaml: unknown suite 'strongest'; valid suites"):
        load_study(write_study(tmp_path, evaluate={"eps": [0.1], "suite": "strongest"}))
    with pytest.raises(ConfigError, match="with suite: none needs a list of attacks"):
        load_study(write_study(tmp_path, evaluate={"eps": [0.1], "suite": "none"}))
    study = load_study(write_study(tmp_path, evaluate={"eps": [0.1]}))
    assert study.evaluate["suite"] == "adaptive"  # the default, with no attack listed


def test_cli_run_lists_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write_study(tmp_path)), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["relu-0", "not", "run", "kwta", "not", "run",
                                               "broken", "not", "run"]
    assert main(["run", str(write_study(tmp_path)), "--cell", "nope"]) == 2


def test_shared_training_posthoc_finetune_and_parallel_jobs(tmp_path: Path) -> None:
    path = write_study(
        tmp_path, grid={},
        cells=[{"id": "relu", "evaluate": {"suite": "adaptive", "n": 12}},
               {"id": "kwta", "activation": "kwta", "act_kwargs": {"ratio": 0.2}},
               {"id": "kwta_inc", "activation": "kwta", "finetune_from": "cell:kwta",
                "sparsity": {"start": 0.2, "target": 0.1, "step": 0.1, "every": 1},
                "epochs": 2, "lr": 0.01},
               {"id": "relu_dro", "posthoc": {"defense": "dro", "p": 0.3},
                "evaluate": {"samples": 3, "attacks": ["fgsm"]}}],
        evaluate={"eps": [0.1], "n": 32, "suite": "none", "attacks": ["fgsm", "pgd:steps=3"],
                  "probe_size": 32, "calibration": True, "landscape": {"n": 4, "steps": 3}})
    study = load_study(path)
    dro = study.cell("relu_dro")
    assert dro.train_dir == study.cell("relu").train_dir and dro.needs == ["relu"]
    assert study.cell("kwta_inc").needs == ["kwta"]
    assert dro.evaluate["samples"] == 3 and dro.evaluate["attacks"] == ["fgsm"]
    logs: list[str] = []
    results = run_study(study, jobs=2, log=logs.append)
    assert [r.status for r in results] == ["done"] * 4, [r.error for r in results]
    started = [m.split()[2] for m in logs if m.endswith("started")]
    assert started.index("kwta_inc") > started.index("kwta")  # after what it needs
    assert not (tmp_path / "out" / "relu_dro" / "checkpoint.pt").exists()  # relu's run reused
    record = json.loads((tmp_path / "out" / "relu_dro" / "robustness.json").read_text())
    assert record["defense"] == {"defense": "dro", "p": 0.3} and record["n_samples"] == 3
    relu = json.loads((tmp_path / "out" / "relu" / "robustness.json").read_text())
    assert relu["suite"]["name"] == "adaptive" and relu["n"] == 12
    groups = {a["label"]: a["group"] for a in relu["attacks"]}
    assert groups == {"apgd_ce": "suite", "apgd_t": "suite", "square": "suite",
                      "fgsm": "paper", "pgd": "paper"}
    from robustact.results import ResultsStore

    store = ResultsStore(tmp_path / "out" / "results.sqlite")
    run = store.run("tiny", "relu_dro")
    kinds = {(a["kind"], a["key"]) for a in store.artifacts(run["id"])}
    assert kinds == {("calibration", "clean"), ("calibration", "fgsm eps=0.1"),
                     ("landscape", "test")}
    inc = json.loads((tmp_path / "out" / "kwta_inc" / "metrics.jsonl").read_text()
                     .splitlines()[-1])
    assert inc["ratio"] == 0.1
    assert "dro(p=0.3)" in (tmp_path / "out" / "results.md").read_text()
