"""The report's figures, drawn from plain data: accuracy against eps, training curves,
reliability diagrams, loss landscapes, and the learning-rate range test.

    figures, notes = build_figures(records)          # every figure of a study's report
    write_lr_find_figure(out, result, config)        # lr_find.svg beside lr_find.json
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustact.errors import ConfigError
from robustact.eval.calibration import Reliability
from robustact.files import write_atomic
from robustact.report import svg
from robustact.report.landscape import check_landscape, landscape_svg
from robustact.report.records import RunRecords
from robustact.report.reliability import reliability_svg
from robustact.report.table import pct
from robustact.report.tables import attack_name
from robustact.results.store import CLEAN, WORST_CASE, format_eps

if TYPE_CHECKING:
    from robustact.train.config import TrainConfig
    from robustact.train.lr_find import RangeTest


@dataclass
class Figure:
    """An SVG figure of the report, written to ``figures/<name>.svg`` and inlined in HTML."""

    name: str  # file stem under figures/
    caption: str
    svg: str
    cell: str | None = None  # None: a study-level figure


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "x"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def accuracy_figure(records: list[RunRecords]) -> Figure | None:
    """Robust accuracy against eps: one panel for the worst case and one per attack, one line
    per cell; eps 0 is the clean accuracy."""
    runs = [r for r in records if any(row["eps"] is not None for row in r.results)]
    if not runs:
        return None
    labels = list(dict.fromkeys(row["attack"] for r in runs for row in r.results
                                if row["attack"] not in (CLEAN, WORST_CASE)))
    panels = []
    for label in [WORST_CASE, *labels]:
        title = "worst case" if label == WORST_CASE else attack_name(label)
        series = []
        for r in runs:
            points = sorted(((row["eps"], row) for row in r.results
                             if row["attack"] == label and row["eps"] is not None),
                            key=lambda p: p[0])
            if not points:
                continue
            clean = r.result(CLEAN, None)
            if clean is not None:
                points.insert(0, (0.0, clean))
            series.append(svg.Series(
                r.cell, [p[0] for p in points], [100 * p[1]["robust_accuracy"] for p in points],
                r.color, [_point_tip(r.cell, title, eps, row) for eps, row in points]))
        panels.append(svg.Panel(title, "eps (pixel scale)", "accuracy (%)", series,
                                ylim=(-1.0, 101.0)))  # points at 0 and 100 stay inside
    legend = [(r.cell, r.color) for r in runs]
    text = svg.panels_svg(panels, title="Robust accuracy against eps", legend=legend,
                          columns=min(3, len(panels)))
    return Figure("accuracy_vs_eps", "Robust accuracy against eps (eps 0: clean accuracy); "
                  "one line per cell.", text)


def _point_tip(cell: str, title: str, eps: float, row: dict[str, Any]) -> str:
    name = "clean" if row["attack"] == CLEAN else title
    ci = ""
    if row.get("ci_low") is not None:
        ci = f" [{pct(row['ci_low'])}, {pct(row['ci_high'])}]"
    return f"{cell}, {name}, eps {format_eps(eps)}: {pct(row['robust_accuracy'])}%{ci}"


def training_figure(records: list[RunRecords]) -> Figure | None:
    """Test accuracy and training loss against epoch, one line per cell."""
    runs = [r for r in records if r.epochs]
    if not runs:
        return None
    panels = []
    for key, title, ylabel, scale in (("test_acc", "test accuracy", "accuracy (%)", 100.0),
                                      ("train_loss", "training loss", "loss", 1.0)):
        series = []
        for r in runs:
            xs = [_number(e.get("epoch", i)) for i, e in enumerate(r.epochs)]
            ys = [None if _number(e.get(key)) is None else scale * e[key] for e in r.epochs]
            series.append(svg.Series(r.cell, xs, ys, r.color,
                                     [f"{r.cell}, epoch {x:g}: {title} "
                                      f"{'-' if y is None else format(y, '.4g')}"
                                      for x, y in zip(xs, ys, strict=True)]))
        panels.append(svg.Panel(title, "epoch", ylabel, series, integer_x=True))
    text = svg.panels_svg(panels, title="Training curves",
                          legend=[(r.cell, r.color) for r in runs])
    return Figure("training_curves", "Test accuracy and training loss per epoch; one line per "
                  "cell.", text)


def reliability_figure(r: RunRecords, notes: list[str]) -> Figure | None:
    """The run's reliability diagrams in one figure; unusable artifacts go to ``notes``."""
    diagrams = {}
    for artifact in r.artifacts:
        if artifact["kind"] != "calibration":
            continue
        try:
            diagrams[artifact["key"]] = Reliability.from_dict(artifact["payload"])
        except (ConfigError, TypeError) as exc:
            notes.append(f"{r.cell}: calibration artifact {artifact['key']!r} is unusable: {exc}")
    if not diagrams:
        return None
    return Figure(f"reliability_{_slug(r.cell)}", f"{r.cell}: reliability diagram "
                  f"({', '.join(diagrams)})",
                  reliability_svg(diagrams, title=f"{r.cell}: reliability"), r.cell)


def landscape_figures(r: RunRecords, notes: list[str]) -> list[Figure]:
    """One figure per loss landscape of the run; unusable artifacts go to ``notes``."""
    figures = []
    for artifact in r.artifacts:
        if artifact["kind"] != "landscape":
            continue
        payload, key = artifact["payload"], artifact["key"]
        problem = check_landscape(payload)
        if problem:
            notes.append(f"{r.cell}: landscape artifact {key!r} is unusable: {problem}")
            continue
        eps = f", eps {format_eps(payload['eps'])}" if _number(payload.get("eps")) else ""
        title = f"{r.cell} ({key}): loss along {payload.get('direction', 'gradient x random')}"
        clean = _number(payload.get("clean_loss"))
        caption = (f"{r.cell}, {key}: loss landscape{eps}"
                   + (f", clean loss {clean:.4g}" if clean is not None else "")
                   + ". A jagged surface means the gradient direction says little about the "
                     "loss a small step away.")
        figures.append(Figure(f"landscape_{_slug(r.cell)}_{_slug(key)}", caption,
                              landscape_svg(payload, title=title + eps), r.cell))
    return figures


def build_figures(records: list[RunRecords]) -> tuple[list[Figure], list[str]]:
    """Every figure of the report (unique file names) and notes on unusable artifacts."""
    notes: list[str] = []
    figures = [f for f in (accuracy_figure(records), training_figure(records)) if f]
    for r in records:
        figures += [f for f in [reliability_figure(r, notes)] if f]
        figures += landscape_figures(r, notes)
    seen: set[str] = set()
    for figure in figures:
        name, k = figure.name, 1
        while name in seen:
            k += 1
            name = f"{figure.name}_{k}"
        figure.name = name
        seen.add(name)
    return figures, notes


def lr_find_svg(result: RangeTest, title: str) -> str:
    """The range test's raw and smoothed loss against log10 lr, cut at 1.5x the starting loss
    (the divergence at the end would squash the curve)."""
    logs = [math.log10(v) for v in result.lrs]
    top = 1.5 * result.smoothed[0]

    def shown(values: list[float]) -> list[float | None]:
        return [v if math.isfinite(v) and v <= top else None for v in values]

    panel = svg.Panel(title, "log10 lr", "loss", [
        svg.Series("loss", logs, shown(result.losses), svg.color(1)),
        svg.Series("smoothed", logs, shown(result.smoothed), svg.color(0)),
    ])
    return svg.panels_svg([panel], columns=1)


def write_lr_find_figure(out: str | Path, result: RangeTest, config: TrainConfig) -> Path:
    """Write ``lr_find.svg`` (the curve of :func:`lr_find_svg`) into ``out``; returns its
    path."""
    path = Path(out) / "lr_find.svg"
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"range test: {config.model}, {config.activation}"
    write_atomic(path, svg.svg_file_text(lr_find_svg(result, title)))
    return path


def range_test_table(curve: RangeTest, rows: int = 12) -> str:
    """A learning-rate range test: every few steps as a text table, then the two readings."""
    every = max(1, len(curve.lrs) // rows)
    lines = ["    step          lr      loss  smoothed"]
    for i in list(range(0, len(curve.lrs), every)) + [len(curve.lrs) - 1]:
        lines.append(f"{i + 1:8d}  {curve.lrs[i]:10.3g}  {curve.losses[i]:8.4f}  "
                     f"{curve.smoothed[i]:8.4f}")
    lines = list(dict.fromkeys(lines))  # the last step may already be listed
    lines.append(f"steepest descent at lr {curve.lr_steepest:.3g}; smallest loss at lr "
                 f"{curve.lr_min_loss:.3g} (rule of thumb for the peak: "
                 f"{curve.lr_min_loss / 10:.3g}); stopped: {curve.stopped}")
    return "\n".join(lines)
