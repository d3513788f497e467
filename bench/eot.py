"""Benchmark of the batched EOT gradient against a loop over draws (not a test): prints a table
and writes JSON.

    python bench/eot.py                        # small_cnn and resnet20 + SAP-100, batch 1 8 64
    python bench/eot.py --models resnet20 --batches 64 --repeats 3

Per model and batch: the time of one EOT gradient of the cross-entropy over ``--n`` draws
(default 32), the gradient every attack step through EOT takes, computed two ways on the
same model and inputs, interleaved in one process:

- loop: ``n`` forward+backward passes of the batch, the per-draw loss gradients added up
  (what AutoAttack's rand version does, and what an attack without EOT support would do);
- batched: ``EOT(model, n).loss_gradient`` (the replicated batch in chunks of whole draws,
  each chunk back-propagated as soon as it is computed; the default chunk size).

Both give the mean of the n draws' loss gradients and the averaged logits; tests/test_wrappers.py
checks that they agree draw for draw. The models carry SAP-100 after every ReLU
(``defenses.apply_defense(model, "sap", frac=1.0)``), random weights and inputs. Reported:
the median seconds of each, and the min / median / max over the repeats of the ratio
loop / batched of back-to-back runs (goal: >= 1 on every row).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from _results import setup, write_result
from robustact.attacks.losses import cross_entropy
from robustact.attacks.wrappers import EOT
from robustact.defenses import apply_defense
from robustact.models import create_model

SHAPES = {"small_cnn": (1, 28, 28), "resnet20": (3, 32, 32)}


def sap_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return apply_defense(create_model(name), "sap", frac=1.0).eval()


def looped(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
           n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean per-draw loss gradient and the mean logits, one draw per forward."""
    grad = torch.zeros_like(x)
    logits = torch.zeros(())
    for _ in range(n):
        xr = x.detach().requires_grad_(True)
        out = model(xr)
        (g,) = torch.autograd.grad(cross_entropy(out, y).sum(), xr)
        grad += g
        logits = logits + out.detach()
    return grad / n, logits / n


def bench_case(name: str, batch: int, n: int, repeats: int,
               warmup: int) -> dict[str, object]:
    model = sap_model(name)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *SHAPES[name], generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    eot = EOT(model, n=n)
    fns: dict[str, Callable[[], object]] = {
        "loop": lambda: looped(model, x, y, n),
        "batched": lambda: eot.loss_gradient(x, y, cross_entropy),
    }
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for r in range(repeats):
        for key in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            start = time.perf_counter()
            fns[key]()
            times[key].append(time.perf_counter() - start)
    ratios = [lo / ba for lo, ba in zip(times["loop"], times["batched"], strict=True)]
    return {
        "model": f"{name}+sap100", "batch": batch, "n": n,
        "chunk_images": min(eot.draws_per_forward(x), n) * batch,
        "loop_s": statistics.median(times["loop"]),
        "batched_s": statistics.median(times["batched"]),
        "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios), "loop_runs_s": times["loop"],
        "batched_runs_s": times["batched"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--n", type=int, default=32, help="EOT draws")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default="bench/results/eot.json")
    args = parser.parse_args()
    setup()

    rows = []
    for name in args.models:
        for batch in args.batches:
            rows.append(bench_case(name, batch, args.n, args.repeats, args.warmup))
            print(f"  {name} batch {batch}: done", flush=True)
    print(f"EOT gradient over {args.n} draws, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved runs; seconds per gradient (median)")
    print(f"{'model':<16}{'batch':>6}{'chunk':>7}{'loop s':>10}{'batched s':>11}"
          f"{'ratio min':>11}{'median':>8}{'max':>7}")
    for r in rows:
        print(f"{r['model']:<16}{r['batch']:>6}{r['chunk_images']:>7}{r['loop_s']:>10.3f}"
              f"{r['batched_s']:>11.3f}{r['ratio_min']:>11.2f}{r['ratio_median']:>8.2f}"
              f"{r['ratio_max']:>7.2f}")
    print("ratio = loop / batched time of back-to-back runs (goal >= 1 on every row); "
          "chunk = images per batched forward")
    write_result(args.json, {
        "rows": rows, "n": args.n, "repeats": args.repeats,
        "min_ratio": min(r["ratio_min"] for r in rows),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(),
    })


if __name__ == "__main__":
    main()
