"""``robustact run``: run a study file's cells (train, evaluate, tabulate) or list them."""

from __future__ import annotations

import argparse
from typing import Any

from robustact.cli.common import (
    add_command,
    add_store_argument,
    add_study_arguments,
    report_failed,
)

RUN_EXAMPLE = ("examples:\n  robustact run demo                # a shipped study, by name\n"
               "  robustact run kaf/fashion_mnist\n"
               "  robustact run kaf/fashion_mnist --cell kaf\n"
               "  robustact run kaf/fashion_mnist --list\n"
               "  robustact run kaf/fashion_mnist --repair\n"
               "  # one SLURM job per cell, each cell's training and evaluation over 4 GPUs\n"
               "  robustact run kaf/fashion_mnist --launcher slurm --partition gpu "
               "--gpus-per-cell 4\n"
               "  robustact run kaf/fashion_mnist --status\n"
               "  # the same on this machine (submitit's local executor), 2 CPU processes a cell\n"
               "  robustact run kaf/fashion_mnist --launcher local "
               "--processes-per-cell 2\n"
               "  # one cell over this node's GPUs\n"
               "  torchrun --nproc-per-node 4 -m robustact run kaf/fashion_mnist "
               "--cell kaf\n")


def add_run_parser(sub: Any) -> None:
    """Add ``run`` to the subparsers ``sub``."""
    p = add_command(sub, "run", "run a study: train and evaluate every cell, tabulate",
                    RUN_EXAMPLE)
    add_study_arguments(p, "study YAML file, or a shipped study's name "
                        "(robustact list studies)",
                        "run only this cell (repeatable); for cluster job arrays",
                        "study directory (default: the file's out, or runs/NAME)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells in parallel processes (one per GPU when there are GPUs)")
    p.add_argument("--repair", action="store_true",
                   help="repair the study and say what was done: duplicate epochs in "
                        "metrics.jsonl, cells left running by a dead process, .tmp files")
    add_store_argument(p)
    add_launcher_arguments(p)


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``run --launcher`` (one submitit job per cell) and ``run --status``."""
    g = p.add_argument_group("cluster (one job per cell, through submitit)")
    g.add_argument("--launcher", choices=("slurm", "local"),
                   help="submit one job per cell: slurm, or local (here, for a try)")
    g.add_argument("--partition", help="SLURM partition (with --launcher slurm)")
    g.add_argument("--gpus-per-cell", type=int, default=0,
                   help="GPUs of each cell's job; its training and evaluation are split "
                        "over them, one process each (default 0)")
    g.add_argument("--processes-per-cell", type=int,
                   help="processes of each cell's job (default: one per GPU, or 1)")
    g.add_argument("--cpus-per-process", type=int, default=4, help="(default 4)")
    g.add_argument("--timeout-min", type=int, default=24 * 60,
                   help="time limit of each job in minutes (default 1440)")
    g.add_argument("--wait", action="store_true",
                   help="with --launcher slurm: wait for the jobs, then write the results "
                        "(the local launcher always waits)")
    g.add_argument("--status", action="store_true",
                   help="show each cell's job and its state in the queue and in the store")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study (or list its cells) and print its results table."""
    from robustact.study import load_any_study, run_study
    from robustact.study.runner import cell_statuses
    from robustact.study.stores import with_store

    _check_counts(args)
    study = with_store(load_any_study(args.study, out=args.out), args.store)
    if args.status:
        return _print_status(study)
    if args.launcher:
        return _launch(study, args)
    if args.repair:
        return _repair(study)
    if args.list:
        for cell, status, why in cell_statuses(study):
            shown = f" ({why})" if status in ("stale", "interrupted") else ""
            print(f"{cell:<24}{status}{shown}")
        return 0
    from robustact.distributed import init_distributed

    ctx, _ = init_distributed("auto")  # a group under torchrun, else a single process
    try:
        results = run_study(study, cells=args.cell or None, jobs=args.jobs,
                            log=print if ctx.is_main else _quiet)
    finally:
        ctx.close()
    if not ctx.is_main:
        return 0
    print((study.out / "results.md").read_text())
    return report_failed([r.id for r in results if r.status != "done"])


def _check_counts(args: argparse.Namespace) -> None:
    """One line for a count out of range, before the study is read."""
    from robustact.errors import ConfigError

    for flag, value, low in (("--jobs", args.jobs, 1), ("--gpus-per-cell", args.gpus_per_cell, 0),
                             ("--processes-per-cell", args.processes_per_cell, 1),
                             ("--cpus-per-process", args.cpus_per_process, 1),
                             ("--timeout-min", args.timeout_min, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")


def _quiet(message: str) -> None:
    pass


def _repair(study: Any) -> int:
    """Repair the study, print what was done; exit status 1 when the store is not whole."""
    from robustact.study.repair import repair_study

    lines = repair_study(study)
    print("\n".join(lines))
    return 1 if any("integrity check" in line and not line.endswith(" ok")
                    for line in lines) else 0


def _launch(study: Any, args: argparse.Namespace) -> int:
    """Submit one job per cell; with the local launcher (or --wait) wait, then tabulate."""
    from robustact.study.launch import Launch, launch
    from robustact.study.runner import write_exports

    config = Launch(args.launcher, partition=args.partition,
                    gpus_per_cell=args.gpus_per_cell,
                    processes_per_cell=args.processes_per_cell,
                    cpus_per_process=args.cpus_per_process, timeout_min=args.timeout_min)
    wait = True if args.wait else None
    launch(study, config, cells=args.cell or None, wait=wait)
    if args.launcher == "slurm" and not args.wait:
        print(f"submitted; follow with: robustact run {args.study} --status")
        return 0
    write_exports(study)
    print((study.out / "results.md").read_text())
    return _print_status(study)


def _print_status(study: Any) -> int:
    """The queue table; exit status 1 when a cell's job failed or its cell failed."""
    from robustact.study.launch import queue_status

    rows = queue_status(study)
    print(f"{'cell':<24}{'job':<14}{'queue':<16}store")
    for cell, job, state, status in rows:
        print(f"{cell:<24}{job:<14}{state:<16}{status}")
    failed = [cell for cell, _, state, status in rows
              if status in ("failed", "interrupted")
              or state in ("FAILED", "INTERRUPTED", "CANCELLED")]
    return report_failed(failed)
