"""Writes a study's report files: ``report.md``, ``report.html`` and ``figures/*.svg``.

    md_path, html_path = write_report(store, "kaf_fmnist", "runs/kaf_fmnist/report")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustact.files import write_atomic
from robustact.report.content import build_report
from robustact.report.html import render_html
from robustact.report.markdown import render_markdown
from robustact.report.svg import svg_file_text
from robustact.results.store import ResultsStore


def write_report(store: ResultsStore, study: str, out_dir: str | Path,
                 paper: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """Render the report of ``study`` from ``store`` into ``out_dir``: ``report.md`` with its
    figures in ``figures/*.svg``, and the self-contained ``report.html``; ``paper``: the rows
    of the paper's numbers to print beside ours (see :mod:`robustact.report.paper`). Returns
    (md path, html path). Each file is written to a temporary name and renamed."""
    out = Path(out_dir)
    report = build_report(store, study, paper)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for figure in report.figures:
        write_atomic(out / "figures" / f"{figure.name}.svg", svg_file_text(figure.svg))
    md_path, html_path = out / "report.md", out / "report.html"
    write_atomic(md_path, render_markdown(report))
    write_atomic(html_path, render_html(report))
    return md_path, html_path
