"""Benchmark of row-wise k-th largest selection (the k-WTA threshold) on CPU.

For a batch of B rows of N float32 values (standard normal) and k = ratio * N, times

- ``np.partition``                 numpy, single-threaded (the previous pure-Python path)
- ``torch.kthvalue``               torch intra-op threads
- ``torch.topk(sorted=False).min`` torch intra-op threads
- ``native t=1`` / ``native t=2``  robustact.activations._select called directly
- ``kth_largest()``                the public wrapper (dispatch + allocation), torch threads

Each value is the median (and min) of ``--repeats`` runs; every method's result is checked
against np.partition. By default the methods are interleaved (each run follows the other
methods' runs, as a selection in a network follows other ops: caches, branch predictors and
torch's spinning OpenMP workers are in a realistic, not a warmed-up, state). ``--blocks`` runs
each method's repeats back to back instead (best case). Prints a table and writes the same
numbers as JSON (``--json``, default bench/results/select_kernel.json).

A second section times the k-WTA mask (B = ``--batch`` rows, N in ``--mask-sizes``, k = 0.1 N):

- ``torch ops``            the k-WTA hot path before ``kwta_mask``: ``kth_largest`` then
                           nextafter / clamp_min / sub / sign / relu on the thresholds
- ``kwta_mask()``          ``robustact.activations.select.kwta_mask`` (one native call)
- ``fwd+bwd torch ops`` /  ``rows * mask`` forward and backward with each mask (what a k-WTA
  ``fwd+bwd kwta_mask``    layer costs per step in training)

Both masks are checked against ``x >= np.partition(...)`` first. JSON key ``mask_results``.

    python bench/select_kernel.py [--batch 128] [--sizes 8192 12544 ...] [--repeats 15] [--blocks]
                                  [--mask-sizes 128 8192 ...] [--mask-only | --no-mask]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robustact.activations import select

DEFAULT_SIZES = (8192, 12544, 16384, 25088, 32768, 65536)
DEFAULT_RATIOS = (0.1, 0.2)
DEFAULT_MASK_SIZES = (128, 8192, 12544, 25088, 65536)
MASK_RATIO = 0.1
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "select_kernel.json"


def build_methods(x: torch.Tensor, k: int) -> dict[str, tuple[int, Callable[[], np.ndarray]]]:
    """name -> (threads used, function returning the (B,) thresholds as numpy)."""
    rows, n = x.shape
    a = x.numpy()
    torch_threads = torch.get_num_threads()
    methods: dict[str, tuple[int, Callable[[], np.ndarray]]] = {
        "np.partition": (1, lambda: np.partition(a, n - k, axis=1)[:, n - k]),
        "torch.kthvalue": (
            torch_threads,
            lambda: torch.kthvalue(x, n - k + 1, dim=1).values.numpy(),
        ),
        "torch.topk(sorted=False).min": (
            torch_threads,
            lambda: torch.topk(x, k, dim=1, sorted=False).values.min(dim=1).values.numpy(),
        ),
    }
    if select.NATIVE_AVAILABLE:
        out = torch.empty(rows)

        def native(threads: int) -> Callable[[], np.ndarray]:
            def run() -> np.ndarray:
                select._native.kth_largest(x.data_ptr(), out.data_ptr(), rows, n, k, threads)
                return out.numpy()

            return run

        methods["native t=1"] = (1, native(1))
        methods["native t=2"] = (2, native(2))
        methods["kth_largest()"] = (torch_threads, lambda: select.kth_largest(x, k).numpy())
    return methods


def bench_case(
    batch: int, n: int, k: int, repeats: int, warmup: int, seed: int, blocks: bool
) -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=gen)
    methods = build_methods(x, k)
    want = np.partition(x.numpy(), n - k, axis=1)[:, n - k]
    for name, (_, fn) in methods.items():
        got = fn()
        if not np.array_equal(got, want):
            raise AssertionError(f"{name} disagrees with np.partition at N={n}, k={k}")
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    schedule = (
        [name for name in methods for _ in range(repeats)]
        if blocks
        else [name for _ in range(repeats) for name in methods]
    )
    for name in schedule:
        fn = methods[name][1]
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
    rows = []
    for name, (threads, _) in methods.items():
        median = statistics.median(times[name])
        rows.append(
            {
                "batch": batch,
                "n": n,
                "k": k,
                "method": name,
                "threads": threads,
                "median_ms": median * 1e3,
                "min_ms": min(times[name]) * 1e3,
                "ns_per_element": median * 1e9 / (batch * n),
            }
        )
    return rows


def torch_ops_mask(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k-WTA mask as robustact.activations.kwta built it before kwta_mask existed."""
    with torch.no_grad():
        threshold = select.kth_largest(rows, k)
        below = torch.nextafter(threshold, threshold.new_tensor(-math.inf))
        below = below.clamp_min_(torch.finfo(rows.dtype).min).unsqueeze_(1)
        return torch.sub(rows, below).sign_().relu_()  # 1.0 where x >= t else 0.0


def build_mask_methods(x: torch.Tensor, k: int) -> dict[str, Callable[[], object]]:
    xg = x.clone().requires_grad_(True)
    grad = torch.ones_like(x)

    def fwd_bwd(make_mask: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            xg.grad = None
            out = xg * make_mask(xg, k)
            out.backward(grad)

        return run

    return {
        "torch ops": lambda: torch_ops_mask(x, k),
        "kwta_mask()": lambda: select.kwta_mask(x, k),
        "fwd+bwd torch ops": fwd_bwd(torch_ops_mask),
        "fwd+bwd kwta_mask": fwd_bwd(select.kwta_mask),
    }


def bench_mask_case(
    batch: int, n: int, k: int, repeats: int, warmup: int, seed: int, blocks: bool
) -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=gen)
    a = x.numpy()
    want = (a >= np.partition(a, n - k, axis=1)[:, n - k : n - k + 1]).astype(np.float32)
    for name, fn in (("torch ops", torch_ops_mask), ("kwta_mask()", select.kwta_mask)):
        if not np.array_equal(fn(x, k).numpy(), want):
            raise AssertionError(f"{name} gives a wrong mask at N={n}, k={k}")
    methods = build_mask_methods(x, k)
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    schedule = (
        [name for name in methods for _ in range(repeats)]
        if blocks
        else [name for _ in range(repeats) for name in methods]
    )
    for name in schedule:
        fn = methods[name]
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
    return [
        {
            "batch": batch,
            "n": n,
            "k": k,
            "method": name,
            "median_us": statistics.median(times[name]) * 1e6,
            "min_us": min(times[name]) * 1e6,
            "ns_per_element": statistics.median(times[name]) * 1e9 / (batch * n),
        }
        for name in methods
    ]


def run_mask_section(args: argparse.Namespace) -> list[dict[str, object]]:
    print(f"k-WTA mask, k = {MASK_RATIO} N: torch-op path vs kwta_mask (one native call)")
    header = (
        f"{'N':>7} {'k':>6}  {'method':<20} {'median us':>10} {'min us':>9} {'ns/el':>7}"
        f" {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for n in args.mask_sizes:
        k = max(1, int(MASK_RATIO * n))
        rows = bench_mask_case(
            args.batch, n, k, args.mask_repeats, args.warmup, args.seed, args.blocks
        )
        by_name = {row["method"]: row for row in rows}
        for row in rows:
            base = "torch ops" if "fwd" not in row["method"] else "fwd+bwd torch ops"
            row["speedup_vs_torch_ops"] = by_name[base]["median_us"] / row["median_us"]
            results.append(row)
            print(
                f"{n:>7} {k:>6}  {row['method']:<20} {row['median_us']:>10.1f} "
                f"{row['min_us']:>9.1f} {row['ns_per_element']:>7.3f} "
                f"{row['speedup_vs_torch_ops']:>7.2f}x"
            )
        print()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS))
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per method (>= 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--blocks", action="store_true", help="run each method's repeats back to back"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="output JSON path")
    parser.add_argument("--mask-sizes", type=int, nargs="+", default=list(DEFAULT_MASK_SIZES))
    parser.add_argument(
        "--mask-repeats", type=int, default=101, help="timed runs per method, mask section"
    )
    section = parser.add_mutually_exclusive_group()
    section.add_argument("--mask-only", action="store_true", help="only the k-WTA mask section")
    section.add_argument("--no-mask", action="store_true", help="skip the k-WTA mask section")
    args = parser.parse_args(argv)
    if args.repeats < 10 or args.mask_repeats < 10:
        parser.error("--repeats and --mask-repeats must be >= 10")

    isa = select._native._isa() if select.NATIVE_AVAILABLE else None
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"torch threads {torch.get_num_threads()}, native "
        f"{'available (' + isa + ')' if isa else 'NOT available'}, "
        f"batch {args.batch}, median of {args.repeats}, "
        f"{'blocks' if args.blocks else 'interleaved'}"
    )
    header = (
        f"{'N':>7} {'k':>6}  {'method':<30} {'thr':>3} {'median ms':>10} {'min ms':>8} {'ns/el':>7}"
    )
    results = []
    if not args.mask_only:
        print(header)
        print("-" * len(header))
    for n in [] if args.mask_only else args.sizes:
        for ratio in args.ratios:
            k = max(1, int(ratio * n))
            cases = bench_case(args.batch, n, k, args.repeats, args.warmup, args.seed, args.blocks)
            for row in cases:
                row["ratio"] = ratio
                results.append(row)
                print(
                    f"{n:>7} {k:>6}  {row['method']:<30} {row['threads']:>3} "
                    f"{row['median_ms']:>10.3f} {row['min_ms']:>8.3f} "
                    f"{row['ns_per_element']:>7.3f}"
                )
            print()
    mask_results = [] if args.no_mask else run_mask_section(args)

    payload = {
        "benchmark": "select_kernel",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "native_available": select.NATIVE_AVAILABLE,
        "native_isa": isa,
        "batch": args.batch,
        "repeats": args.repeats,
        "schedule": "blocks" if args.blocks else "interleaved",
        "data": "standard normal float32",
        "results": results,
        "mask_ratio": MASK_RATIO,
        "mask_repeats": args.mask_repeats,
        "mask_results": mask_results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
