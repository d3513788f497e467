"""Benchmark of the KAF activation (not a test): run by hand, prints a table and writes JSON.

    python bench/kaf.py                      # defaults below: 1 and torch's default threads
    python bench/kaf.py --repeats 7 --threads 1 --skip-naive-time

One training step of ``create_model("resnet20", act_layer=...)`` on a random batch (128 x
3x32x32 by default, CPU, ``model.train()``): forward, cross-entropy, backward. Variants:
ReLU, KAF (fixed dictionary, ``kaf``), KAF_Free (``kaf_free``) and, for comparison, a naive KAF
that materialises the (B, C, H, W, D) kernel tensor with plain autograd
(:func:`robustact.activations.kaf.kaf_naive`). Measured:

- step time: median of ``--repeats`` interleaved runs (the order alternates every round);
  goal (issue): KAF <= 3x the ReLU step;
- bytes saved for backward in one step (``torch.autograd.graph.saved_tensors_hooks``, each
  storage counted once);
- peak RSS increase of one step (``resource.getrusage().ru_maxrss`` before and after the step)
  in a fresh subprocess per variant, so that no variant inherits another's peak;
- forward+backward of the first KAF layer's shape alone, (B, 16, 32, 32).

Timings are per intra-op thread count (``--threads``). A KAF call is a few hundred small
tensor ops; when other processes compete for the cores, every multi-threaded op waits for a
descheduled OpenMP thread, and multi-thread timings can be many times the single-thread ones
(the JSON records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _results import setup, write_result
from robustact.activations import KAF, initialize_lazy
from robustact.activations.kaf import kaf, kaf_general, kaf_naive
from robustact.models import create_model

VARIANTS = ("relu", "kaf", "kaf_free", "kaf_naive")


class NaiveKAF(KAF):
    """KAF computed by :func:`kaf_naive`: the kernel tensor (B, C, H, W, D) stays alive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kaf_naive(x, self.alpha, self.dictionary_points(), self.gamma_value)


def build(variant: str, batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    act = NaiveKAF if variant == "kaf_naive" else variant
    model = create_model("resnet20", act_layer=act).train()
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    initialize_lazy(model, x[:2])
    return model, x, y


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - start


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one step."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return sum(storages.values())


def rss_child(variant: str, batch: int, threads: int) -> None:
    """Run in a fresh process: print the peak RSS (MiB) before and after one training step."""
    torch.set_num_threads(threads)
    model, x, y = build(variant, batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_step(model, x, y)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_mb": before / 1024, "after_mb": after / 1024}))  # KiB on Linux


def rss_increase(variant: str, batch: int, threads: int) -> float:
    """Peak RSS increase (MiB) of one step in a fresh process. Linux carries ru_maxrss over
    fork and exec, so this runs while the parent is still small (before any model is built)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", variant,
           "--batch", str(batch), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    peak = json.loads(out.strip().splitlines()[-1])
    return peak["after_mb"] - peak["before_mb"]


def bench_steps(variants: list[str], batch: int, repeats: int,
                warmup: int) -> dict[str, list[float]]:
    built = {v: build(v, batch) for v in variants}
    for _ in range(warmup):
        for model, x, y in built.values():
            train_step(model, x, y)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        for v in (variants if r % 2 == 0 else list(reversed(variants))):
            times[v].append(train_step(*built[v]))
        print(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{v} {times[v][-1]:.2f} s" for v in variants), flush=True)
    return times


def bench_layer(batch: int, repeats: int) -> dict[str, float]:
    """Forward+backward (ms) of one activation on (batch, 16, 32, 32), the first KAF's input."""
    torch.manual_seed(0)
    x0 = torch.randn(batch, 16, 32, 32) * 1.5
    grad = torch.randn_like(x0)
    layer = KAF(16)
    free = KAF(16, trainable_dict=True)
    grid = layer.dictionary_points()
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": torch.relu,
        "kaf": lambda t: kaf(t, layer.alpha),
        "kaf_free": lambda t: kaf_general(t, free.alpha, free.dictionary, free.gamma),
        "kaf_naive": lambda t: kaf_naive(t, layer.alpha, grid, layer.gamma_value),
    }

    def run(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        x = x0.clone().requires_grad_()
        start = time.perf_counter()
        fn(x).backward(grad)
        return time.perf_counter() - start

    for fn in fns.values():
        run(fn)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            times[k].append(run(fns[k]))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+",
                        default=sorted({1, torch.get_num_threads()}),
                        help="intra-op thread counts to time (default: 1 and torch's default)")
    parser.add_argument("--skip-naive-time", action="store_true",
                        help="time only relu, kaf, kaf_free (the naive step is slow and big)")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--json", default="bench/results/kaf.json")
    parser.add_argument("--rss-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup()
    if args.rss_child:
        rss_child(args.rss_child, args.batch, args.threads[0])
        return

    # memory first, while this process is small (see rss_increase)
    rss = {} if args.skip_rss else {v: rss_increase(v, args.batch, args.threads[0])
                                     for v in VARIANTS}
    saved = {v: saved_bytes(*build(v, args.batch)) / 2**20 for v in VARIANTS}
    timed = [v for v in VARIANTS if not (args.skip_naive_time and v == "kaf_naive")]
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"resnet20 train step (forward, CE, backward), batch {args.batch} x 3x32x32, "
              f"{threads} thread(s), median of {args.repeats} interleaved runs", flush=True)
        times = bench_steps(timed, args.batch, args.repeats, args.warmup)
        layer = bench_layer(args.batch, args.repeats)
        med = {v: statistics.median(t) for v, t in times.items()}
        runs.append({"threads": threads, "step_s": med, "step_runs_s": times,
                     "x_relu": {v: med[v] / med["relu"] for v in med}, "layer_ms": layer})

    print(f"\nresnet20, batch {args.batch}, step = forward + CE + backward (median s); "
          f"layer = one activation on ({args.batch}, 16, 32, 32), forward + backward (ms)")
    head = f"{'variant':<11}"
    for r in runs:
        head += f"{'step ' + str(r['threads']) + 't':>10}{'x relu':>8}"
        head += f"{'layer ' + str(r['threads']) + 't':>11}"
    head += f"{'saved MB':>10}{'x relu':>8}{'RSS +MB':>9}"
    print(head)
    for v in VARIANTS:
        line = f"{v:<11}"
        for r in runs:
            if v in r["step_s"]:
                line += f"{r['step_s'][v]:>10.2f}{r['x_relu'][v]:>7.2f}x"
            else:
                line += f"{'-':>10}{'-':>8}"
            line += f"{r['layer_ms'][v]:>11.1f}"
        line += f"{saved[v]:>10.0f}{saved[v] / saved['relu']:>7.2f}x"
        line += f"{rss[v]:>9.0f}" if v in rss else f"{'-':>9}"
        print(line)
    for r in runs:
        print(f"{r['threads']} thread(s): KAF step / ReLU step {r['x_relu']['kaf']:.2f} "
              f"(goal <= 3), KAF_Free {r['x_relu']['kaf_free']:.2f}")
    write_result(args.json, {
        "model": "resnet20", "batch": args.batch, "input": "3x32x32", "repeats": args.repeats,
        "runs": runs, "saved_mb": saved, "rss_increase_mb": rss,
        "torch": torch.__version__, "machine": platform.machine(),
        "processor": platform.processor(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
