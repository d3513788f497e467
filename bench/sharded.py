"""Benchmark of sharded evaluation (not a test): run by hand, prints a table and writes JSON.

    python bench/sharded.py                      # small_cnn on Fashion-MNIST, CPU
    python bench/sharded.py --device cuda --procs 1,2,4 --n 2000

Trains a small checkpoint once (or takes ``--checkpoint``), then runs the same
``robustact attack`` in 1, 2, ... processes (``torchrun --nproc-per-node P``), each run
``--repeats`` times, interleaved; prints the median wall time per process count, the speed-up
over one process and whether every run's per-example outcomes equal the one-process run's.
On a CPU each process gets ``cores // P`` threads, so the comparison is at equal cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import setup, write_result
from robustact.distributed import local_torchrun


def train_checkpoint(out: Path, device: str) -> Path:
    subprocess.run([sys.executable, "-m", "robustact", "train", "--model", "small_cnn",
                    "--dataset", "fashion_mnist", "--train-subset", "4000", "--epochs", "1",
                    "--device", device, "--no-progress", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def attack_once(args: argparse.Namespace, procs: int, out: Path) -> tuple[float, object]:
    """(wall seconds, per-example outcomes) of one ``robustact attack`` in ``procs``
    processes."""
    attack = ["attack", "--checkpoint", str(args.checkpoint), "--suite", args.suite,
              "--attacks", args.attacks, "--eps", args.eps, "-n", str(args.n), "--block",
              str(args.block), "--device", args.device, "--no-diagnostics", "--out", str(out)]
    launcher = local_torchrun(procs)
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [*launcher, "robustact", *attack] if procs > 1 else [sys.executable, "-m",
                                                                  "robustact", *attack]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    record = json.loads(out.with_suffix(".json").read_text())
    outcomes = [record["clean_correct"]] + [(a["label"], a["correct"]) for a in record["attacks"]]
    return seconds, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--suite", default="none")
    parser.add_argument("--attacks", default="fgsm,pgd:steps=20")
    parser.add_argument("--eps", default="0.1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench/results/sharded.json")
    args = parser.parse_args()
    setup()
    procs = [int(p) for p in args.procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is None:
            args.checkpoint = train_checkpoint(Path(tmp) / "run", args.device)
        times: dict[int, list[float]] = {p: [] for p in procs}
        outcomes: dict[int, list[object]] = {p: [] for p in procs}
        for r in range(args.repeats):
            for p in procs:  # interleaved: the machine's noise hits every count alike
                seconds, result = attack_once(args, p, Path(tmp) / f"p{p}-{r}")
                times[p].append(seconds)
                outcomes[p].append(result)
    reference = outcomes[procs[0]][0]
    rows = [{"processes": p, "median_s": statistics.median(times[p]), "min_s": min(times[p]),
             "max_s": max(times[p]),
             "speedup": statistics.median(times[procs[0]]) / statistics.median(times[p]),
             "identical": all(o == reference for o in outcomes[p])} for p in procs]
    print(f"sharded evaluation: {args.attacks} at eps {args.eps} on {args.n} points, blocks of "
          f"{args.block}, {args.device}, {args.repeats} runs each")
    print(f"{'processes':>9} {'median s':>9} {'min s':>7} {'max s':>7} {'speed-up':>9} "
          f"{'identical':>9}")
    for row in rows:
        print(f"{row['processes']:>9} {row['median_s']:>9.1f} {row['min_s']:>7.1f} "
              f"{row['max_s']:>7.1f} {row['speedup']:>8.2f}x {str(row['identical']):>9}")
    write_result(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
