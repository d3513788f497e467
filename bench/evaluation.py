"""robustact's suite against the original AutoAttack code, per cell of a trained study (a
benchmark, not a test): prints a table and writes JSON.

    make demo                                  # trains the demo's six networks (runs/demo)
    python bench/evaluation.py                 # adaptive vs AutoAttack on each demo cell
    python bench/evaluation.py --cells relu,relu_sap --n 100 --suite adaptive

For every cell the same first ``n`` test images go through robustact's ``--suite`` (default
``adaptive``, without the diagnostics) and through AutoAttack (PyPI ``pyautoattack``, the
original code; ``make bench`` installs it outside robustact's dependencies): its standard
version (APGD-CE, APGD-T, FAB-T, Square 5000) on a deterministic model, its rand version
(APGD-CE and APGD-DLR with EOT over 20 passes) on a randomized one. Both sides are judged the
same way, by :func:`robustact.eval.randomness.judge` with the passes the suite chose: a point is
robust if it is right on the clean input and right on the returned point in both judgings.
Reported per cell: robust accuracy of each, the points each breaks that the other leaves
robust, wall time of each and their ratio (and in the JSON, each attack's points and seconds).
Goal: robustact lower or equal on every cell, in no more wall time.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from _results import setup, write_result
from robustact.data import BatchLoader, load_dataset
from robustact.eval import evaluate
from robustact.eval.randomness import judge
from robustact.eval.robustness import collect
from robustact.study import load_study
from robustact.train import load_model

DEFAULT_CELLS = "relu,kwta02,kwta01,kaf,relu_sap,relu_fast_at"


def cell_data(study: Any, cell_id: str, n: int) -> tuple[torch.nn.Module, torch.Tensor,
                                                           torch.Tensor]:
    """The cell's trained network (with its post-hoc defense) and its first n test images."""
    cell = study.cell(cell_id)
    model, config = load_model(cell.train_dir, torch.device("cpu"))
    if cell.posthoc:
        from robustact.defenses import apply_defense

        apply_defense(model, cell.posthoc["defense"],
                      **{k: v for k, v in cell.posthoc.items() if k != "defense"})
    data = load_dataset(config["dataset"], "test").subset(n)
    x, y = collect(BatchLoader(data, batch_size=512, resize=config.get("resize")), n)
    return model.eval(), x, y


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                   randomized: bool, seed: int) -> tuple[torch.Tensor, float]:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    version = "rand" if randomized else "standard"
    attack = AutoAttack(model, norm="Linf", eps=eps, version=version, seed=seed, device="cpu")
    start = time.perf_counter()
    x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=256)
    return x_adv, time.perf_counter() - start


def bench_cell(study: Any, cell_id: str, n: int, eps: float, suite: str,
               seed: int) -> dict[str, Any]:
    model, x, y = cell_data(study, cell_id, n)
    start = time.perf_counter()
    report = evaluate(model, (x, y), [], [eps], suite=suite, n_samples=None, diagnose=False)
    ours_s = time.perf_counter() - start
    ours = report.worst_case(eps)
    samples, randomized = report.n_samples, report.randomized
    x_adv, aa_s = run_autoattack(model, x, y, eps, randomized, seed)
    theirs = report.clean_correct & judge(model, x_adv, y, samples, randomized).correct
    return {
        "cell": cell_id, "n": len(y), "eps": eps, "suite": suite, "randomized": randomized,
        "n_samples": samples, "eot": report.suite.eot,
        "clean": report.clean_accuracy,
        "robustact": ours.float().mean().item(), "autoattack": theirs.float().mean().item(),
        "robustact_only": int((theirs & ~ours).sum()),  # broken by robustact alone
        "autoattack_only": int((ours & ~theirs).sum()),  # broken by AutoAttack alone
        "robustact_s": ours_s, "autoattack_s": aa_s, "time_ratio": ours_s / aa_s,
        "attacks": [o.label for o in report.outcomes],
        # per attack: points attacked, seconds, and why a budgeted one was skipped
        "per_attack": [{"label": o.label, "points": int(o.attacked.sum()),
                        "seconds": o.seconds, "skipped": o.params.get("skipped")}
                       for o in report.outcomes],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'cell':<14}{'rand':>5}{'clean':>8}{'robustact':>11}{'AutoAttack':>12}"
          f"{'ours only':>11}{'AA only':>9}{'ours s':>9}{'AA s':>9}{'ratio':>7}")
    for r in rows:
        print(f"{r['cell']:<14}{'yes' if r['randomized'] else 'no':>5}"
              f"{100 * r['clean']:>7.1f}%{100 * r['robustact']:>10.1f}%"
              f"{100 * r['autoattack']:>11.1f}%{r['robustact_only']:>11}{r['autoattack_only']:>9}"
              f"{r['robustact_s']:>9.1f}{r['autoattack_s']:>9.1f}{r['time_ratio']:>7.2f}")
    print("robust accuracy judged the same way for both; 'ours only' = points robustact broke "
          "that AutoAttack left robust, 'AA only' the reverse; ratio = robustact / AutoAttack "
          "wall time (goal: AA only = 0 and ratio <= 1 on every cell)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="configs/demo.yaml", help="study file")
    parser.add_argument("--out", default=None, help="the study's output directory (default: "
                                                    "the study file's out)")
    parser.add_argument("--cells", default=DEFAULT_CELLS)
    parser.add_argument("--n", type=int, default=200, help="test images per cell")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--suite", default="adaptive")
    parser.add_argument("--seed", type=int, default=0, help="AutoAttack's seed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default="bench/results/evaluation.json")
    args = parser.parse_args()
    setup()
    if args.threads:
        torch.set_num_threads(args.threads)
    study = load_study(args.study, out=args.out)
    rows = []
    for cell_id in [c.strip() for c in args.cells.split(",") if c.strip()]:
        if not (Path(study.cell(cell_id).train_dir) / "checkpoint.pt").exists():
            raise SystemExit(f"cell {cell_id} has no trained network in "
                             f"{study.cell(cell_id).train_dir}; run `make demo` first")
        rows.append(bench_cell(study, cell_id, args.n, args.eps, args.suite, args.seed))
        print(f"{cell_id}: robustact {100 * rows[-1]['robustact']:.1f}% in "
              f"{rows[-1]['robustact_s']:.1f} s, AutoAttack {100 * rows[-1]['autoattack']:.1f}% "
              f"in {rows[-1]['autoattack_s']:.1f} s", flush=True)
    print_table(rows)
    write_result(args.json, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                             "machine": platform.machine(), "rows": rows})


if __name__ == "__main__":
    main()
