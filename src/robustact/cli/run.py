"""``robustact run``: run a study file's cells (train, evaluate, tabulate) or list them."""

from __future__ import annotations

import argparse
from typing import Any

from robustact.cli.common import add_command, add_study_arguments, report_failed

RUN_EXAMPLE = ("examples:\n  robustact run configs/kaf_fmnist.yaml\n"
               "  robustact run configs/kaf_fmnist.yaml --cell kaf_relu\n"
               "  robustact run configs/kaf_fmnist.yaml --list\n")


def add_run_parser(sub: Any) -> None:
    """Add ``run`` to the subparsers ``sub``."""
    p = add_command(sub, "run", "run a study: train and evaluate every cell, tabulate",
                    RUN_EXAMPLE)
    add_study_arguments(p, "study YAML file (see docs/studies.md)",
                        "run only this cell (repeatable); for cluster job arrays",
                        "study directory (default: the file's out, or runs/NAME)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells in parallel processes (one per GPU when there are GPUs)")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study (or list its cells) and print its results table."""
    from robustact.study import load_any_study, run_study
    from robustact.study.runner import cell_statuses

    study = load_any_study(args.study, out=args.out)
    if args.list:
        for cell, status, why in cell_statuses(study):
            print(f"{cell:<24}{status}{f' ({why})' if status == 'stale' else ''}")
        return 0
    results = run_study(study, cells=args.cell or None, jobs=args.jobs)
    print((study.out / "results.md").read_text())
    return report_failed([r.id for r in results if r.status != "done"])
