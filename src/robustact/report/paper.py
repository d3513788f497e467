"""The report's "paper vs ours" table: each published number beside ours, with the difference.

    paper_table([{"cell": "relu", "metric": "clean", "eps": None, "paper": 93.66, "ours": 91.2,
                  "status": "done", "source": "seed 000, Table 6, ReLU"}])
    # | Cell | Metric | ε | Paper | Ours | Ours - paper | Source |
    # | relu | A_std  | - | 93.66 | 91.2 | -2.5         | seed 000, Table 6, ReLU |

The rows come from the study file's ``paper:`` blocks (built by
:func:`robustact.study.summary.paper_rows`); percentages in, points of difference out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustact.report.table import NUMBER, TEXT, Cell, Table
from robustact.report.tables import attack_name
from robustact.results.store import CLEAN, format_eps

NOT_RUN = "not run"


def metric_name(metric: str) -> str:
    """``clean`` -> ``A_std``; an attack label -> its paper-style name (``pgd_paper``...)."""
    return "A_std" if metric == CLEAN else attack_name(metric)


def difference(ours: float | None, paper: float) -> float | None:
    """Ours minus the paper's, in points (None without ours)."""
    return None if ours is None else ours - paper


def _ours_cell(row: dict[str, Any]) -> Cell:
    if row.get("ours") is not None:
        return Cell(f"{row['ours']:.1f}")
    status = row.get("status") or NOT_RUN
    return Cell(NOT_RUN if status == "done" else status)


def _difference_cell(row: dict[str, Any]) -> Cell:
    diff = difference(row.get("ours"), row["paper"])
    return Cell("-") if diff is None else Cell(f"{diff:+.1f}")


def paper_table(rows: Sequence[dict[str, Any]]) -> Table | None:
    """The paper's numbers beside ours, one line per number (None without any)."""
    if not rows:
        return None
    header = ["Cell", "Metric", "ε", "Paper", "Ours", "Ours - paper", "Source"]
    body = [[Cell(r["cell"]), Cell(metric_name(r["metric"])),
             Cell("-" if r.get("eps") is None else format_eps(r["eps"])),
             Cell(f"{r['paper']:g}"), _ours_cell(r), _difference_cell(r),
             Cell(str(r.get("source") or "-"))] for r in rows]
    notes = ["Accuracy in %; the paper's numbers from the study file's paper: blocks. "
             "Ours - paper: the difference in points (positive: ours is higher). "
             f"{NOT_RUN}: the cell, or that attack at that eps, has no finished result."]
    return Table(None, header, body, notes,
                 [TEXT, TEXT, NUMBER, NUMBER, NUMBER, NUMBER, TEXT])
