"""Markdown tables of flat result rows: a study's ``results.md`` and the store's export.

    study_results_table(study.name, collect_results(study))   # robustact.study.runner rows
    export_markdown(store.table(study))                        # ResultsStore.table rows
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustact.report.table import Table, pct

MARKDOWN_COLUMNS = [
    "study", "cell", "status", "model", "activation", "act_kwargs", "dataset", "training",
    "epochs", "seed", "train_seconds", "attack", "eps", "robust_accuracy", "ci_low", "ci_high",
    "n", "robust", "verdict",
]


def study_results_table(name: str, rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table titled ``name``: one row per cell, robust accuracy (%) per attack and
    eps (the row dicts of :func:`robustact.study.runner.collect_results`)."""
    columns = list(dict.fromkeys(k for r in rows for k in r["robust"]))
    worst = [c for c in columns if c.startswith("worst_case@")]
    columns = [c for c in columns if c not in worst] + worst
    head = ["cell", "activation", "training", "clean", *columns, "verdict", "train s", "eval s"]
    body = [_study_row(r, columns) if r["status"] == "done" else
            [r["cell"], r["activation"], "",
             f"{r['status']}{': ' + r['error'] if r['error'] else ''}", *[""] * (len(head) - 4)]
            for r in rows]
    n = next((r["n"] for r in rows if r["n"]), None)
    notes = [f"Robust accuracy in % on {n} test images; worst_case = correct under every attack "
             "at that eps."] if n else []
    return Table(name, head, body, notes, level=1).to_markdown()


def _study_row(r: dict[str, Any], columns: list[str]) -> list[str]:
    training = (r["adversarial"] + "-AT" if r["adversarial"] else
                "not trained (external)" if r["activation"] == "external" else "standard")
    if r["posthoc"]:
        training += f" + {r['posthoc']}"
    return [r["cell"], r["activation"], training, pct(r["clean"]),
            *(pct(r["robust"].get(c)) for c in columns), r["verdict"] or "-",
            f"{r['train_seconds']:.0f}" if r["train_seconds"] else "-",
            f"{r['eval_seconds']:.0f}" if r["eval_seconds"] else "-"]


def export_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The store's export rows (:meth:`robustact.results.ResultsStore.table`) as a markdown
    table of :data:`MARKDOWN_COLUMNS`, accuracies with 4 decimals; ends with a newline."""
    body = [[_export_cell(k, r[k]) for k in MARKDOWN_COLUMNS] for r in rows]
    return Table(None, MARKDOWN_COLUMNS, body).to_markdown() + "\n"


def _export_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in ("robust_accuracy", "ci_low", "ci_high") and isinstance(value, float):
        return f"{value:.4f}"
    if key == "train_seconds" and isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
