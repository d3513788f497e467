"""Benchmark of the k-WTA layer (not a test): run by hand, prints a table and writes JSON.

    python bench/kwta.py                 # layer shapes + one Fashion-MNIST epoch, ReLU vs k-WTA
    python bench/kwta.py --skip-epoch    # layer shapes only

Per shape (batch 128, CPU): forward+backward time of ReLU, of the original code's
topk-repeat-permute k-WTA, and of robustact's k-WTA; median of ``--repeats`` runs, measured
side by side (interleaved) in one process. Goals (issue 2): robustact >= 3x faster than
topk-repeat on every shape, <= 4x ReLU at the median shape; a small_cnn training epoch with
k-WTA <= 1.25x the ReLU epoch.
"""

from __future__ import annotations

import argparse
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
                 grad: torch.Tensor) -> float:
    x = x0.detach().requires_grad_()
    start = time.perf_counter()
    fn(x).backward(grad)
    return time.perf_counter() - start


def bench_shapes(batch: int, ratio: float, repeats: int) -> list[dict[str, object]]:
    rows = []
    for net, shapes in SHAPES.items():
        for shape in shapes:
            torch.manual_seed(0)
            x = torch.randn(batch, *shape)
            grad = torch.randn_like(x)
            layer = KWTA(ratio)
            fns = {"relu": torch.relu, "topk_repeat": lambda t: topk_repeat(t, ratio),
                   "robustact": layer}
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(3):  # warm-up
                for fn in fns.values():
                    fwd_bwd_time(fn, x, grad)
            for _ in range(repeats):
                for name, fn in fns.items():
                    times[name].append(fwd_bwd_time(fn, x, grad))
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            rows.append({
                "net": net, "shape": "x".join(map(str, shape)), "units": x[0].numel(),
                "relu_ms": med["relu"], "topk_repeat_ms": med["topk_repeat"],
                "robustact_ms": med["robustact"],
                "speedup_vs_topk": med["topk_repeat"] / med["robustact"],
                "x_relu": med["robustact"] / med["relu"],
                "backend": backend_for(x.view(batch, -1)),
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
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epoch-runs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, help="images per epoch (default: all 60000)")
    parser.add_argument("--skip-epoch", action="store_true")
    parser.add_argument("--json", default="bench/results/kwta.json")
    args = parser.parse_args()
    setup()

    rows = bench_shapes(args.batch, args.ratio, args.repeats)
    print(f"k-WTA ratio {args.ratio}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; forward+backward in ms")
    head = f"{'net':<10}{'shape':<12}{'relu':>8}{'topk-rep':>10}{'robustact':>11}" \
           f"{'vs topk':>9}{'x relu':>8}  backend"
    print(head)
    for r in rows:
        print(f"{r['net']:<10}{r['shape']:<12}{r['relu_ms']:>8.2f}{r['topk_repeat_ms']:>10.2f}"
              f"{r['robustact_ms']:>11.2f}{r['speedup_vs_topk']:>8.1f}x{r['x_relu']:>7.1f}x"
              f"  {r['backend']}")
    x_relu = sorted(r["x_relu"] for r in rows)
    median_x_relu = statistics.median(x_relu)
    min_speedup = min(r["speedup_vs_topk"] for r in rows)
    print(f"min speed-up vs topk-repeat: {min_speedup:.1f}x (goal >= 3x); "
          f"median cost vs ReLU: {median_x_relu:.1f}x (goal <= 4x)")
    result: dict[str, object] = {
        "shapes": rows, "min_speedup_vs_topk": min_speedup, "median_x_relu": median_x_relu,
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
