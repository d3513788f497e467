"""``robustact results`` and ``robustact report``: read a study's stored results, write reports."""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustact.cli.common import add_command, add_store_argument
from robustact.errors import ConfigError

STUDY_HELP = "study YAML file, study directory or results.sqlite file"


def add_results_parsers(sub: Any) -> None:
    """Add ``results`` and ``report`` to the subparsers ``sub``."""
    res = add_command(sub, "results", "list, show or export a study's stored results",
                      "examples:\n  robustact results list configs/demo.yaml\n"
                      "  robustact results show runs/demo relu\n"
                      "  robustact results export runs/demo --format markdown\n"
                      "  robustact results list configs/demo.yaml --store "
                      "postgresql://me@db-host:5432/studies\n")
    res.add_argument("action", choices=("list", "show", "export"))
    res.add_argument("study", help=STUDY_HELP)
    res.add_argument("cell", nargs="?", help="cell id (show)")
    res.add_argument("--format", default="markdown", choices=("csv", "json", "markdown"))
    add_store_argument(res)
    rep = add_command(sub, "report", "write report.md and report.html from stored results",
                      "examples:\n  robustact report configs/demo.yaml\n"
                      "  robustact report runs/demo --out /tmp/report\n"
                      "the paper's numbers (the study file's paper: blocks) are printed beside "
                      "ours\nwhen the study is given as its YAML file or shipped name\n")
    rep.add_argument("study", help=STUDY_HELP)
    rep.add_argument("--out", help="report directory (default: <study dir>/report)")
    add_store_argument(rep)


def cmd_results(args: argparse.Namespace) -> int:
    """List a study's runs, show one cell's rows as JSON, or export the store."""
    from robustact.study.stores import open_study_store

    store, name, _ = open_study_store(args.study, store=args.store)
    if args.action == "list":
        from robustact.results.owners import run_status

        for run in store.runs(name):
            print(f"{run['cell']:<24}{run_status(run):<12}{run.get('device') or '':<8}"
                  f"{run.get('finished') or run.get('started') or ''}")
    elif args.action == "show":
        if not args.cell:
            raise ConfigError("results show needs a cell id: robustact results show STUDY CELL")
        run = store.run(name, args.cell)
        if run is None:
            raise ConfigError(f"no cell {args.cell!r} in study {name}")
        print(json.dumps({"run": run, "results": store.results(run_id=run["id"]),
                          "diagnostics": store.diagnostics(run["id"])}, indent=1, default=str))
    else:
        print(_export(store, name, args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.md and report.html (with the paper's numbers beside ours when given the
    study file); print where they are."""
    from pathlib import Path

    from robustact.report import write_report
    from robustact.study.stores import open_study_store
    from robustact.study.summary import study_paper_rows

    store, name, root = open_study_store(args.study, store=args.store)
    md, html = write_report(store, name, Path(args.out) if args.out else root / "report",
                            paper=study_paper_rows(args.study, store))
    print(f"report: {html}\n        {md}")
    return 0


def _export(store: Any, study: str, fmt: str) -> str:
    """The store's export table as CSV or JSON (the store's own) or markdown (rendered)."""
    if fmt != "markdown":
        return store.export(study, fmt)
    from robustact.report.results_tables import export_markdown

    return export_markdown(store.table(study))
