"""Benchmark of the attacks and attack wrappers (not a test): prints a table and writes JSON.

    python bench/attacks.py                   # both parts, defaults below
    python bench/attacks.py --repeats 3 --skip-eot

(a) PGD-20 L-inf throughput (images/s) of robustact's
``PGD(eps=8/255, steps=20, step_size=2/255, random_start=True)`` against
``torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=20, random_start=True)`` on the same
model and batch: small_cnn at batch 256 on 1x28x28 and resnet20 at batch 128 on 3x32x32
(random weights and inputs, labels = the model's clean predictions; both libraries take logits
and [0, 1] inputs). Two comparisons, goal (issue 15) robustact / torchattacks >= 1.0 in both:
- craft: ``PGD.perturb`` (the adversarial points only, all 20 steps on every point, as
  adversarial training uses it) against ``torchattacks.PGD``;
- judged: ``PGD(...)(model, x, y)`` (points, success, queries; the 20 forward+backward passes
  judge the points they are taken at, fooled points retire every 4 steps, and the last iterate
  is judged by one more forward on the points still open) against torchattacks plus the
  forward pass a robust accuracy needs ("ta+judge").
The runs are interleaved, in alternating order, and the medians are reported; ``paired`` gives
the min / median / max over the repeats of the ratio of back-to-back runs.

(b) The EOT gradient of the CE loss w.r.t. the inputs of a randomized small_cnn (Gaussian noise
added before every ReLU, eval mode) at batches 1, 8 and 64, over 32 draws: ``EOT(model,
32).loss_gradient`` (what attacks use: the replicated batch in chunks of whole draws, each
back-propagated as it is computed) vs a Python loop of 32 forward+backward passes of the
same estimator (the mean of the per-draw gradients); ms per gradient and the speed-up.
bench/eot.py does the same for SAP-100 models.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _results import setup, write_result
from robustact.attacks import PGD
from robustact.attacks.losses import cross_entropy
from robustact.attacks.wrappers import EOT
from robustact.models import create_model

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 20
PGD_CASES = [("small_cnn", 256, (1, 28, 28), {}), ("resnet20", 128, (3, 32, 32), {})]


class NoisyReLU(nn.Module):
    """ReLU after adding N(0, sigma^2) noise, in train and eval mode: a toy randomized defense."""

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.sigma * torch.randn_like(x))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_pgd(repeats: int, warmup: int) -> list[dict[str, object]]:
    import torchattacks

    rows = []
    for name, batch, shape, kwargs in PGD_CASES:
        torch.manual_seed(0)
        model = create_model(name, **kwargs).eval()
        x = torch.rand(batch, *shape)
        with torch.no_grad():  # every point starts right: none is fooled before the attack
            y = model(x).argmax(1)
        ours = PGD(eps=EPS, steps=STEPS, step_size=ALPHA, random_start=True,
                   batch_size=batch)
        theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)

        def judged(theirs=theirs, model=model, x=x, y=y) -> torch.Tensor:
            adv = theirs(x, y)
            with torch.no_grad():  # what a robust accuracy needs: the model's answer on adv
                return model(adv).argmax(1) != y

        fns = {"robustact": lambda ours=ours, model=model, x=x, y=y: ours(model, x, y),
               "robustact_craft": lambda ours=ours, model=model, x=x, y=y:
                   ours.perturb(model, x, y),
               "torchattacks": lambda theirs=theirs, x=x, y=y: theirs(x, y),
               "torchattacks_judged": judged}
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(repeats):
            order = list(fns) if r % 2 == 0 else list(reversed(fns))  # interleave, alternate
            for key in order:
                times[key].append(timed(fns[key]))
        med = {k: statistics.median(v) for k, v in times.items()}

        # each repeat times the variants back to back: per-repeat ratios cancel slow drifts
        # of a shared machine
        craft, judge = (paired(times, "torchattacks", "robustact_craft"),
                        paired(times, "torchattacks_judged", "robustact"))
        rows.append({
            "model": name, "batch": batch, "shape": "x".join(map(str, shape)),
            "broken": float(ours(model, x, y).success.float().mean()),
            "robustact_img_s": batch / med["robustact"],
            "robustact_craft_img_s": batch / med["robustact_craft"],
            "torchattacks_img_s": batch / med["torchattacks"],
            "torchattacks_judged_img_s": batch / med["torchattacks_judged"],
            "ratio_craft": med["torchattacks"] / med["robustact_craft"],
            "ratio_judged": med["torchattacks_judged"] / med["robustact"],
            "paired_craft": [min(craft), statistics.median(craft), max(craft)],
            "paired_judged": [min(judge), statistics.median(judge), max(judge)],
            "seconds": times,
        })
        print(f"  pgd {name}: done", flush=True)
    return rows


def paired(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-repeat ratios of the times of ``num`` and ``den``."""
    return [t / o for t, o in zip(times[num], times[den], strict=True)]


def bench_eot(n: int, batch: int, repeats: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = create_model("small_cnn", act_layer=NoisyReLU).eval()
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    eot = EOT(model, n=n)

    def batched() -> torch.Tensor:
        return eot.loss_gradient(x, y, cross_entropy)[1]

    def looped() -> torch.Tensor:
        total = torch.zeros_like(x)
        for _ in range(n):
            xr = x.clone().requires_grad_()
            loss = F.cross_entropy(model(xr), y, reduction="sum")
            total += torch.autograd.grad(loss, xr)[0]
        return total / n

    # the same estimator (the mean of the per-draw CE gradients), n forward+backward passes
    fns = {"eot_batched": batched, "loop": looped}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for key in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            times[key].append(timed(fns[key]))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"n": n, "batch": batch, "eot_ms": med["eot_batched"], "loop_ms": med["loop"],
            "speedup": med["loop"] / med["eot_batched"],
            "eot_s": times["eot_batched"], "loop_s": times["loop"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eot-n", type=int, default=32)
    parser.add_argument("--eot-batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--skip-pgd", action="store_true")
    parser.add_argument("--skip-eot", action="store_true")
    parser.add_argument("--json", default="bench/results/attacks.json")
    args = parser.parse_args()
    setup()

    result: dict[str, object] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(),
        "repeats": args.repeats,
    }
    print(f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    if not args.skip_pgd:
        rows = bench_pgd(args.repeats, args.warmup)
        print("PGD-20 L-inf eps 8/255, step 2/255, random start; images/s")
        print(f"{'model':<10}{'batch':>6}{'broken':>8}{'craft':>9}{'ta':>9}{'ratio':>7}"
              f"{'paired':>16}{'judged':>9}{'ta+judge':>10}{'ratio':>7}{'paired':>16}")
        for r in rows:
            pc = "/".join(f"{v:.2f}" for v in r["paired_craft"])
            pj = "/".join(f"{v:.2f}" for v in r["paired_judged"])
            print(f"{r['model']:<10}{r['batch']:>6}{r['broken']:>8.0%}"
                  f"{r['robustact_craft_img_s']:>9.1f}{r['torchattacks_img_s']:>9.1f}"
                  f"{r['ratio_craft']:>7.2f}{pc:>16}{r['robustact_img_s']:>9.1f}"
                  f"{r['torchattacks_judged_img_s']:>10.1f}{r['ratio_judged']:>7.2f}{pj:>16}")
        print("labels = the model's clean predictions (every point starts right); broken = "
              "robustact's success rate.\ncraft = robustact's PGD.perturb (adversarial points "
              "only, all 20 steps on every point, as\nadversarial training uses it) against "
              "torchattacks.PGD; judged = robustact's PGD(...)(model, x, y)\n(points, success "
              "and queries; fooled points retire every 4 steps) against torchattacks plus the\n"
              "forward pass its success needs. ratio = robustact / torchattacks throughput of "
              "the medians (goal\n>= 1.0); paired = min/median/max over repeats of the ratio "
              "of back-to-back runs")
        result["pgd"] = rows
    if not args.skip_eot:
        rows = [bench_eot(args.eot_n, b, args.repeats, args.warmup) for b in args.eot_batch]
        print(f"EOT gradient, small_cnn + noisy ReLU, n {args.eot_n}; ms per averaged gradient")
        print(f"{'batch':>6}{'batched':>10}{'loop':>10}{'speed-up':>10}")
        for r in rows:
            print(f"{r['batch']:>6}{r['eot_ms']:>10.1f}{r['loop_ms']:>10.1f}"
                  f"{r['speedup']:>9.2f}x")
        result["eot"] = rows
    write_result(args.json, result)


if __name__ == "__main__":
    main()
