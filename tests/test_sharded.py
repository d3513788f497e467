"""Sharded evaluation: 2 gloo processes under torchrun give the outcomes of one process, per
example; a killed process fails the run, and the rerun resumes from the finished blocks."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustact.cli import main
from robustact.distributed import local_torchrun
from robustact.errors import ConfigError
from robustact.eval.shards import ShardDir, block_seed, plan, run_blocks

TRAIN = ["train", "--model", "small_cnn", "--dataset", "fashion_mnist", "--train-subset", "512",
         "--test-subset", "128", "--batch-size", "64", "--device", "cpu", "--no-progress",
         "--epochs", "1", "--lr", "0.05"]


def _torchrun(args: list[str], procs: int = 2) -> list[str]:
    return [*local_torchrun(procs), "robustact", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _outcomes(stem: Path) -> tuple[list[int], list[tuple]]:
    record = json.loads(stem.with_suffix(".json").read_text())
    return record["clean_correct"], [(a["label"], a["eps"], a["correct"], a["attacked"],
                                      a["flips"]) for a in record["attacks"]]


@pytest.fixture(scope="module")
def sap_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN with SAP activations: randomized, so seeding matters."""
    out = tmp_path_factory.mktemp("sharded") / "sap"
    assert main([*TRAIN, "--activation", "sap", "--out", str(out)]) == 0
    return out


def test_two_processes_match_one(sap_run: Path, tmp_path: Path) -> None:
    attack = ["attack", "--checkpoint", str(sap_run), "--suite", "none", "--attack",
              "pgd:steps=5", "--eps", "0.05,0.1", "-n", "40", "--block", "8", "--device",
              "cpu", "--no-diagnostics"]
    assert main([*attack, "--out", str(tmp_path / "one")]) == 0
    done = subprocess.run(_torchrun([*attack, "--out", str(tmp_path / "two")]), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    clean, attacks = _outcomes(tmp_path / "one")
    assert (clean, attacks) == _outcomes(tmp_path / "two")
    assert len(clean) == 40 and len(attacks) == 2
    assert sum(attacks[0][2]) < sum(clean)  # the attack did something
    assert not (sap_run / "shards").exists()  # the saved blocks go once the record is written


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=``rank`` (a child of ``parent``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[3]) == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_killed_rank_fails_the_run_and_the_rerun_resumes(tmp_path: Path) -> None:
    run = tmp_path / "relu"
    assert main([*TRAIN, "--out", str(run)]) == 0
    attack = ["attack", "--checkpoint", str(run), "--suite", "none", "--attack",
              "pgd:steps=150", "--eps", "0.1", "-n", "48", "--block", "4", "--device", "cpu",
              "--no-diagnostics"]
    proc = subprocess.Popen(_torchrun([*attack, "--out", str(tmp_path / "killed")]),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 240
    while not list(run.glob("shards/*/block-00001.pt")):  # rank 1 finished its first block
        assert proc.poll() is None and time.monotonic() < deadline, "no block was saved"
        time.sleep(0.2)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "rank: 1" in output and "Signal 9 (SIGKILL)" in output  # torchrun names the rank
    assert "error: rank 0: stopped by SIGTERM" in output  # the survivor says what to do
    assert "rerun the same command to resume" in output
    assert not (tmp_path / "killed.json").exists()
    saved = ShardDir(next(run.glob("shards/*"))).saved()
    assert 1 in saved and len(saved) < 12

    resumed = subprocess.run([sys.executable, "-m", "robustact", *attack, "--out",
                              str(tmp_path / "resumed")], env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {len(saved)} finished block(s) read back" in resumed.stderr
    assert main([*attack, "--seed", "0", "--out", str(tmp_path / "fresh")]) == 0
    assert _outcomes(tmp_path / "resumed") == _outcomes(tmp_path / "fresh")


def test_blocks_are_seeded_by_place_not_by_process(tmp_path: Path) -> None:
    """run_blocks alone: the same blocks in any order, or read back, give the same draws."""
    def compute(span):  # noqa: ANN001, ANN202 - a random draw per block
        return {"draw": torch.rand(span.hi - span.lo)}

    assert [(s.lo, s.hi) for s in plan(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert block_seed(0, 1) != block_seed(0, 2) != block_seed(1, 1)
    first = run_blocks(10, 4, 7, compute)
    torch.rand(5)  # a different global state before the second run changes nothing
    shards = ShardDir(tmp_path / "blocks")
    second = run_blocks(10, 4, 7, compute, shards=shards)
    assert all(torch.equal(a["draw"], b["draw"]) for a, b in zip(first, second, strict=True))
    assert shards.saved() == [0, 1, 2]
    shards.save(1, {"draw": torch.zeros(4)})  # read back, not recomputed
    assert torch.equal(run_blocks(10, 4, 7, compute, shards=shards)[1]["draw"], torch.zeros(4))
    other = run_blocks(10, 4, 8, compute)
    assert not torch.equal(other[0]["draw"], first[0]["draw"])


def test_seed_and_block_enter_the_hash_only_when_set() -> None:
    from robustact.eval.config import EvalConfig

    base = EvalConfig.from_dict({"eps": [0.1]})
    assert base.hash() == EvalConfig.from_dict({"eps": [0.1], "seed": 0, "block": 256}).hash()
    assert base.hash() != EvalConfig.from_dict({"eps": [0.1], "seed": 1}).hash()
    assert base.hash() != EvalConfig.from_dict({"eps": [0.1], "block": 64}).hash()
    with pytest.raises(ConfigError, match="block: must be >= 1, got 0"):
        EvalConfig.from_dict({"eps": [0.1], "block": 0})


def test_block_outcomes_merge_into_one() -> None:
    from robustact.eval.outcomes import AttackOutcome, merge_outcomes

    def part(correct: list[int], attacked: list[int], trace: list[float],
             queries: float) -> dict:
        return dataclasses.asdict(AttackOutcome(
            "pgd", "pgd", 0.1, torch.tensor(correct, dtype=torch.bool),
            torch.tensor(attacked, dtype=torch.bool), False, None, False, {}, 1.5,
            loss_trace=trace, queries=queries, flips=1))

    merged = merge_outcomes([part([1, 0], [1, 1], [1.0, 2.0], 10.0),
                             part([0, 0, 1], [1, 0, 0], [4.0, 5.0], 40.0),
                             part([0], [0], [], 0.0)])
    assert merged.correct.tolist() == [True, False, False, False, True, False]
    assert merged.attacked.tolist() == [True, True, True, False, False, False]
    assert merged.seconds == 4.5 and merged.flips == 3
    assert merged.loss_trace == [2.0, 3.0]  # weighted by the attacked points: 2 and 1
    assert merged.queries == 20.0
