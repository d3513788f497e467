"""A study's report as content blocks, built once from the records of a results store.

    report = build_report(store, "kaf_fmnist")
    report.blocks     # headings, paragraphs, tables and figures, in reading order
    report.figures    # every figure (each written to figures/<name>.svg)
    report.tables     # the accuracy (and RL) tables, as in the blocks

Contents: provenance (date, code and package versions), one table per dataset and model in the
seed papers' layout with the paired differences to the ReLU cell on the same images, the
papers' numbers beside ours (given the rows of the study file's ``paper:`` blocks), the
reinforcement-learning tables, robust accuracy against eps, training curves, the runs'
provenance, per-cell diagnostics, reliability diagrams (``calibration`` artifacts), loss
landscapes (``landscape`` artifacts) and the failed cells with their errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from robustact.report.blocks import (
    Block,
    BulletList,
    CellStatus,
    Checks,
    Code,
    Heading,
    Mark,
    MetaLines,
    Paragraph,
    Strong,
)
from robustact.report.figures import Figure, build_figures
from robustact.report.paper import paper_table
from robustact.report.records import RunRecords, load_records
from robustact.report.rl import is_rl, rl_tables
from robustact.report.table import Table
from robustact.report.tables import accuracy_tables, activation_label, runs_table, verdict_css
from robustact.results.store import ResultsStore, training_label


@dataclass
class Report:
    """What a report shows: its title, its blocks in order, and the figures and tables among
    them."""

    study: str
    title: str
    blocks: list[Block]
    figures: list[Figure]
    tables: list[Table]


def build_report(store: ResultsStore, study: str,
                 paper: list[dict[str, Any]] | None = None) -> Report:
    """Everything a report shows, from the store's records of ``study``; ``paper``: the rows
    of the paper's numbers beside ours (:func:`robustact.report.paper.paper_table`)."""
    from robustact import __version__

    records = load_records(store, study)
    figures, notes = build_figures(records)
    tables = accuracy_tables([r for r in records if not is_rl(r)]) + rl_tables(records)
    compared = paper_table(paper or [])
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC") + f" by robustact {__version__}"
    title = f"Study report: {study}"
    blocks: list[Block] = [
        Heading(title, 1), Paragraph([f"Generated {generated}."], "meta"),
        MetaLines(_provenance(records)), Heading("Robust accuracy", 2, "robust-accuracy"),
        *(tables or [Paragraph(["No finished cell has results."])]),
        *([Heading("Paper vs ours", 2, "paper"), compared] if compared else []),
        Heading("Figures", 2, "figures"), *(f for f in figures if f.cell is None),
        runs_table(records), Heading("Cells", 2, "cells")]
    for r in records:
        blocks += cell_blocks(r, [f for f in figures if f.cell == r.cell])
    blocks += failed_blocks(records)
    if notes:
        blocks += [Heading("Notes", 2, "notes"), BulletList([[n] for n in notes])]
    return Report(study, title, blocks, figures, tables + ([compared] if compared else []))


def cell_blocks(r: RunRecords, figures: list[Figure]) -> list[Block]:
    """One cell's section: status, error, verdict and checks, then its figures."""
    blocks: list[Block] = [
        Heading(r.cell, 3),
        CellStatus(r.run["status"], f"{activation_label(r)}, {training_label(r.config)}",
                   "failed" if r.run["status"] == "failed" else None)]
    if r.run.get("error"):
        blocks.append(Paragraph(["Error: ", Code(r.run["error"])], "failed"))
    if r.diagnostics:
        checks = [(c, (str(c.get("name", "?")), str(c.get("message", "")))) for c in r.checks]
        fired = [pair for c, pair in checks if c.get("fired")]
        blocks += [Paragraph(["Verdict: ", Mark(r.verdict or "-", verdict_css(r.verdict), True),
                              f" ({len(fired)} of {len(checks)} checks fired)"]),
                   Checks(fired, [pair for c, pair in checks if not c.get("fired")])]
    return blocks + figures


def failed_blocks(records: list[RunRecords]) -> list[Block]:
    """The failed cells with their errors (``None.`` without any)."""
    failed = [[Strong(r.cell), ": ", Code(r.run.get("error") or "no error recorded")]
              for r in records if r.run["status"] == "failed"]
    return [Heading("Failed cells", 2, "failed"),
            BulletList(failed) if failed else Paragraph(["None."])]


def _provenance(records: list[RunRecords]) -> list[str]:
    def distinct(*keys: str) -> list[str]:
        values = []
        for r in records:
            parts = [str(r.run.get(k)) for k in keys if r.run.get(k)]
            if parts:
                values.append(" @ ".join(parts))
        return list(dict.fromkeys(values))

    code = distinct("code_version", "git_commit")
    lines = [("Code: robustact " if len(code) <= 1 else "Code (mixed versions!): robustact ")
             + ("; ".join(code) or "unknown")]
    for label, key in (("Python", "python_version"), ("torch", "torch_version"),
                       ("numpy", "numpy_version"), ("Devices", "device")):
        values = distinct(key)
        if values:
            lines.append(f"{label}: {', '.join(values)}")
    counts = {s: sum(r.run["status"] == s for r in records) for s in ("done", "failed",
                                                                       "running")}
    lines.append(f"Cells: {len(records)} ({counts['done']} done, {counts['failed']} failed, "
                 f"{counts['running']} running)")
    return lines
