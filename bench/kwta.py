"""Benchmark of the k-WTA layer (not a test): run by hand, prints a table and writes JSON.

    python bench/kwta.py                 # layer shapes + one Fashion-MNIST epoch, ReLU vs k-WTA
    python bench/kwta.py --skip-epoch    # layer shapes only
    python bench/kwta.py --skip-epoch --repeats 9 --runs 9   # the ratio in each of 9 runs

Per shape (batch 128, CPU): forward+backward time of ReLU, of the original code's
topk-repeat-permute k-WTA, and of robustact's k-WTA, measured side by side (interleaved) in
one process; each of the ``--repeats`` rounds times the three once, the rounds going through
the six orders in turn (an op timed right after topk-repeat pays for its spinning OpenMP
workers and its cache footprint, so each method follows each other one equally often, which
a fixed or rotated order does not give). A timing covers a block of calls in a row lasting
about ``--block-ms`` (2 ms; as timeit does, since a single call of a few tens of microseconds,
the dense 128 shape, is at the mercy of the scheduler; ``--block-ms 0`` times one call, the
first of which pays for what the previous method left cold). A run is one pass over all
shapes; its speed-up on a shape is the ratio of the medians of its rounds. With ``--runs`` N
the runs are repeated and the table gives, per shape, the min / median / max of the run
speed-ups. Goals (issues 2 and 15): robustact >= 3x faster than topk-repeat on every shape in
every run, <= 4x ReLU at the median shape; a small_cnn training epoch with k-WTA <= 1.25x the
ReLU epoch.
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch

from _results import setup, write_result
from robustact.activations import KWTA
from robustact.activations.select import backend_for

SHAPES = {
    "small_cnn": [(32, 28, 28), (64, 14, 14), (128,)],
    "resnet18": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)],
}


def topk_repeat(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """The formulation of the original k-WTA code (README of the authors' repository)."""
    size = x[0].numel()
    k = int(ratio * size)
    tmpx = x.view(x.shape[0], -1)
    topval = tmpx.topk(k, dim=1)[0][:, -1]
    topval = topval.repeat(tmpx.shape[1], 1).permute(1, 0).view_as(x)
    comp = (x >= topval).to(x)
    return comp * x


def fwd_bwd_time(fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor,
                 grad: torch.Tensor, number: int = 1) -> float:
    """Seconds per forward+backward, over ``number`` calls in a row."""
    start = time.perf_counter()
    for _ in range(number):
        x = x0.detach().requires_grad_()
        fn(x).backward(grad)
    return (time.perf_counter() - start) / number


def time_shape(x: torch.Tensor, grad: torch.Tensor, ratio: float, repeats: int,
               block_s: float) -> dict[str, list[float]]:
    """Seconds of each method's forward+backward, ``repeats`` interleaved rounds going through
    the orders of the methods in turn, after three rounds of warm-up. A round times each method
    over a block of calls lasting about ``block_s`` (at least one call)."""
    layer = KWTA(ratio)
    fns = {"relu": torch.relu, "topk_repeat": lambda t: topk_repeat(t, ratio),
           "robustact": layer}
    orders = list(itertools.permutations(fns))
    times: dict[str, list[float]] = {name: [] for name in fns}
    warm = [fwd_bwd_time(fn, x, grad) for _ in range(3) for fn in fns.values()]
    number = max(1, round(block_s / statistics.median(warm)))
    for r in range(repeats):
        for name in orders[r % len(orders)]:
            times[name].append(fwd_bwd_time(fns[name], x, grad, number))
    return times


def bench_shapes(batch: int, ratio: float, repeats: int, runs: int,
                 block_s: float) -> list[dict[str, object]]:
    cases = [(net, shape) for net, shapes in SHAPES.items() for shape in shapes]
    per_run: list[list[dict[str, list[float]]]] = [[] for _ in cases]
    for _ in range(runs):
        for i, (_, shape) in enumerate(cases):
            torch.manual_seed(0)
            x = torch.randn(batch, *shape)
            per_run[i].append(time_shape(x, torch.randn_like(x), ratio, repeats, block_s))
    rows = []
    for (net, shape), runs_times in zip(cases, per_run, strict=True):
        speedups = [statistics.median(t["topk_repeat"]) / statistics.median(t["robustact"])
                    for t in runs_times]
        med = {name: statistics.median(v for t in runs_times for v in t[name]) * 1e3
               for name in runs_times[0]}
        rows.append({
            "net": net, "shape": "x".join(map(str, shape)), "units": math.prod(shape),
            "relu_ms": med["relu"], "topk_repeat_ms": med["topk_repeat"],
            "robustact_ms": med["robustact"],
            "speedup_vs_topk": min(speedups), "speedup_median": statistics.median(speedups),
            "speedup_max": max(speedups), "speedup_runs": speedups,
            "x_relu": med["robustact"] / med["relu"],
            "backend": backend_for(torch.empty(batch, math.prod(shape))),
        })
    return rows


def bench_epoch(runs: int, train_subset: int | None) -> dict[str, object]:
    """Wall time of training epochs of small_cnn on Fashion-MNIST, ReLU and k-WTA interleaved."""
    import tempfile

    from robustact.train import TrainConfig, train

    seconds: dict[str, list[float]] = {"relu": [], "kwta": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for act in ("relu", "kwta"):
                config = TrainConfig(
                    model="small_cnn", dataset="fashion_mnist", activation=act,
                    act_kwargs={"ratio": 0.2} if act == "kwta" else {}, epochs=1,
                    batch_size=128, lr=0.05, device="cpu", progress=False,
                    train_subset=train_subset, test_subset=256, out=f"{tmp}/{act}{run}",
                )
                result = train(config, log=lambda _: None)
                seconds[act].append(result.history[-1]["seconds"])
                print(f"  epoch run {run + 1}/{runs} {act}: {seconds[act][-1]:.1f} s", flush=True)
    relu, kwta = statistics.median(seconds["relu"]), statistics.median(seconds["kwta"])
    pairs = [k / r for r, k in zip(seconds["relu"], seconds["kwta"], strict=True)]
    return {"relu_s": relu, "kwta_s": kwta, "ratio": kwta / relu,
            "median_pair_ratio": statistics.median(pairs), "runs": seconds,
            "images": train_subset or 60000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per run and shape")
    parser.add_argument("--runs", type=int, default=1, help="runs over all shapes")
    parser.add_argument("--block-ms", type=float, default=2.0,
                        help="time each method over calls in a row lasting about this long "
                             "(0: one call per timing)")
    parser.add_argument("--epoch-runs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, help="images per epoch (default: all 60000)")
    parser.add_argument("--skip-epoch", action="store_true")
    parser.add_argument("--json", default="bench/results/kwta.json")
    args = parser.parse_args()
    setup()

    rows = bench_shapes(args.batch, args.ratio, args.repeats, args.runs, args.block_ms / 1e3)
    print(f"k-WTA ratio {args.ratio}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{args.runs} run(s) of {args.repeats} rounds, blocks of ~{args.block_ms:g} ms; "
          f"forward+backward in ms (median)")
    print(f"{'net':<10}{'shape':<12}{'relu':>8}{'topk-rep':>10}{'robustact':>11}"
          f"{'vs topk: min':>14}{'median':>8}{'max':>7}{'x relu':>8}  backend")
    for r in rows:
        print(f"{r['net']:<10}{r['shape']:<12}{r['relu_ms']:>8.2f}{r['topk_repeat_ms']:>10.2f}"
              f"{r['robustact_ms']:>11.2f}{r['speedup_vs_topk']:>13.1f}x"
              f"{r['speedup_median']:>7.1f}x{r['speedup_max']:>6.1f}x{r['x_relu']:>7.1f}x"
              f"  {r['backend']}")
    x_relu = sorted(r["x_relu"] for r in rows)
    median_x_relu = statistics.median(x_relu)
    min_speedup = min(r["speedup_vs_topk"] for r in rows)
    print(f"min speed-up vs topk-repeat over shapes and runs: {min_speedup:.1f}x (goal >= 3x); "
          f"median cost vs ReLU: {median_x_relu:.1f}x (goal <= 4x)")
    result: dict[str, object] = {
        "shapes": rows, "min_speedup_vs_topk": min_speedup, "median_x_relu": median_x_relu,
        "runs": args.runs, "repeats": args.repeats, "block_ms": args.block_ms,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(),
    }
    if not args.skip_epoch:
        print("training epochs of small_cnn on Fashion-MNIST (interleaved):")
        epoch = bench_epoch(args.epoch_runs, args.train_subset)
        print(f"epoch: relu {epoch['relu_s']:.1f} s, k-WTA {epoch['kwta_s']:.1f} s, "
              f"ratio of medians {epoch['ratio']:.2f}, median of run-pair ratios "
              f"{epoch['median_pair_ratio']:.2f} (goal <= 1.25)")
        result["epoch"] = epoch
    write_result(args.json, result)


if __name__ == "__main__":
    main()
