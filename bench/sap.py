"""Benchmark of Stochastic Activation Pruning (not a test): prints a table and writes JSON.

    python bench/sap.py                     # both parts, defaults below (~5-10 min on 2 cores)
    python bench/sap.py --skip-eot          # the layer only
    python bench/sap.py --eot-subset 512 --loop-passes 100   # part (b) in full, no extrapolation

(a) Forward time of the SAP layer (frac 1.0, i.e. SAP-100, r = N draws per map) against ReLU on
activation maps of resnet20's three stage shapes at batch 128 (16x32x32, 32x16x16, 64x8x8),
ReLU outputs as input; the exact multinomial sampler (default) and Athalye et al.'s independent
variant, and for scale the C->C 3x3 convolution of resnet20 on the same maps. Median of
``--repeats`` interleaved runs, no autograd.

(b) Wall time of one 100-draw Monte-Carlo input gradient for 512 CIFAR-shaped examples on
``create_model("resnet20")`` (random weights, eval mode) with SAP-100 applied post hoc:

- batched: ``EOT(model, n=100)`` (batch replicated to 51,200 images, chunks of 128), gradient of
  the cross-entropy of the averaged logits. At full size the kept activations would exceed EOT's
  2 GiB budget, so EOT recomputes each chunk in backward (one extra forward); the timed run on
  ``--eot-subset`` examples forces the same (``checkpoint=True``) and is scaled by
  512 / subset (the cost is linear in the number of chunks).
- loop: 100 forward+backward passes of the 512-image batch, averaging the per-draw gradients
  (the original SAP code's estimator; the estimators differ, the work per draw is the same).
  ``--loop-passes`` of the 100 are timed and scaled by 100 / passes.

Scaled numbers are marked as such in the table and the JSON keeps the measured seconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _results import setup, write_result
from robustact.attacks.wrappers import EOT
from robustact.defenses import apply_sap, sap
from robustact.models import create_model

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
EOT_N, EOT_EXAMPLES = 100, 512


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_layer(batch: int, repeats: int) -> list[dict[str, object]]:
    rows = []
    for shape in SHAPES:
        torch.manual_seed(0)
        x = torch.relu(torch.randn(batch, *shape))
        conv = torch.nn.Conv2d(shape[0], shape[0], 3, padding=1, bias=False)
        fns = {"relu": lambda x=x: torch.relu(x), "conv3x3": lambda x=x, conv=conv: conv(x),
               "sap": lambda x=x: sap(x, 1.0),
               "sap_independent": lambda x=x: sap(x, 1.0, method="independent")}
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        with torch.no_grad():
            for r in range(repeats):
                for key in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                    times[key].append(timed(fns[key]))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({
            "shape": "x".join(map(str, shape)), "units": x[0].numel(), "batch": batch,
            "relu_ms": med["relu"], "conv3x3_ms": med["conv3x3"], "sap_ms": med["sap"],
            "sap_independent_ms": med["sap_independent"],
            "sap_x_relu": med["sap"] / med["relu"],
            "independent_x_relu": med["sap_independent"] / med["relu"],
            "sap_x_conv3x3": med["sap"] / med["conv3x3"],
            "ns_per_unit_sap": med["sap"] * 1e6 / x.numel(),
            "runs_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        })
        print(f"  layer {rows[-1]['shape']}: done", flush=True)
    return rows


def bench_eot(subset: int, loop_passes: int, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = apply_sap(create_model("resnet20").eval(), 1.0)
    x_all = torch.rand(EOT_EXAMPLES, 3, 32, 32)
    y_all = torch.randint(0, 10, (EOT_EXAMPLES,))
    x_sub, y_sub = x_all[:subset], y_all[:subset]
    # the full-size run would exceed EOT's memory budget and recompute; force it for the subset
    eot = EOT(model, n=EOT_N, checkpoint=True)

    def batched() -> torch.Tensor:
        xr = x_sub.clone().requires_grad_()
        return torch.autograd.grad(F.cross_entropy(eot(xr), y_sub, reduction="sum"), xr)[0]

    def looped() -> torch.Tensor:
        total = torch.zeros_like(x_all)
        for _ in range(loop_passes):
            xr = x_all.clone().requires_grad_()
            loss = F.cross_entropy(model(xr), y_all, reduction="sum")
            total += torch.autograd.grad(loss, xr)[0]
        return total / loop_passes

    with torch.no_grad():
        model(x_all[:8])  # warm-up
    fns = {"eot_batched": batched, "loop": looped}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for key in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            times[key].append(timed(fns[key]))
            print(f"  eot run {r + 1}/{repeats} {key}: {times[key][-1]:.1f} s", flush=True)
    eot_scale, loop_scale = EOT_EXAMPLES / subset, EOT_N / loop_passes
    eot_s = statistics.median(times["eot_batched"]) * eot_scale
    loop_s = statistics.median(times["loop"]) * loop_scale
    return {
        "model": "resnet20+sap-100", "n": EOT_N, "examples": EOT_EXAMPLES,
        "eot_subset": subset, "eot_scale": eot_scale, "loop_passes": loop_passes,
        "loop_scale": loop_scale, "eot_chunk": eot.chunk_size(x_sub), "eot_checkpoint": True,
        "eot_s": eot_s, "loop_s": loop_s, "speedup": loop_s / eot_s,
        "eot_ms_per_image_draw": eot_s * 1e3 / (EOT_N * EOT_EXAMPLES),
        "loop_ms_per_image_draw": loop_s * 1e3 / (EOT_N * EOT_EXAMPLES),
        "measured_eot_s": times["eot_batched"], "measured_loop_s": times["loop"],
        "extrapolated": eot_scale != 1 or loop_scale != 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per layer variant")
    parser.add_argument("--eot-repeats", type=int, default=2, help="timed runs of part (b)")
    parser.add_argument("--eot-subset", type=int, default=16,
                        help="examples of the 512 run through batched EOT (scaled to 512)")
    parser.add_argument("--loop-passes", type=int, default=3,
                        help="passes of the 100 timed in the loop (scaled to 100)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--skip-eot", action="store_true")
    parser.add_argument("--json", default="bench/results/sap.json")
    args = parser.parse_args()
    setup()
    if not 1 <= args.eot_subset <= EOT_EXAMPLES or not 1 <= args.loop_passes <= EOT_N:
        parser.error(f"--eot-subset must be in 1..{EOT_EXAMPLES}, --loop-passes in 1..{EOT_N}")
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict[str, object] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(),
    }
    print(f"{torch.get_num_threads()} threads")
    if not args.skip_layer:
        rows = bench_layer(args.batch, args.repeats)
        print(f"SAP-100 layer forward, batch {args.batch}, median of {args.repeats}; ms")
        print(f"{'shape':<10}{'units':>7}{'relu':>8}{'conv3x3':>9}{'sap':>9}{'x relu':>8}"
              f"{'x conv':>8}{'indep.':>8}{'x relu':>8}{'ns/unit':>9}")
        for r in rows:
            print(f"{r['shape']:<10}{r['units']:>7}{r['relu_ms']:>8.2f}{r['conv3x3_ms']:>9.1f}"
                  f"{r['sap_ms']:>9.1f}{r['sap_x_relu']:>7.0f}x{r['sap_x_conv3x3']:>7.1f}x"
                  f"{r['sap_independent_ms']:>8.1f}{r['independent_x_relu']:>7.0f}x"
                  f"{r['ns_per_unit_sap']:>9.1f}")
        print("conv3x3: a C->C 3x3 convolution on the same maps, for scale; ns/unit: SAP per "
              "activation unit")
        result["layer"] = rows
        result["repeats"] = args.repeats
    if not args.skip_eot:
        eot = bench_eot(args.eot_subset, args.loop_passes, args.eot_repeats)
        mark = " (scaled)" if eot["extrapolated"] else ""
        print(f"{EOT_N}-draw MC input gradient, resnet20 + SAP-100, {EOT_EXAMPLES} examples, "
              f"median of {args.eot_repeats}{mark}")
        print(f"  batched EOT: {eot['eot_s']:.0f} s (measured on {args.eot_subset} examples, "
              f"x{eot['eot_scale']:.0f}; {eot['eot_ms_per_image_draw']:.1f} ms per image-draw)")
        print(f"  loop:        {eot['loop_s']:.0f} s (measured {args.loop_passes} passes, "
              f"x{eot['loop_scale']:.1f}; {eot['loop_ms_per_image_draw']:.1f} ms per image-draw)")
        print(f"  loop / batched: {eot['speedup']:.2f}")
        result["eot"] = eot
    write_result(args.json, result)


if __name__ == "__main__":
    main()
