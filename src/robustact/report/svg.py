"""The SVG toolkit every figure is drawn with: escaping, palette, axes, legends, line charts.

One look for every figure (white background, grey grid, the same palette, sans-serif 12 px):
:func:`panels_svg` here, the reliability diagrams (:mod:`robustact.report.reliability`) and the
loss landscapes (:mod:`robustact.report.landscape`). Every figure is a standalone ``<svg>``
element without an XML declaration, so it can be inlined in HTML; :func:`svg_file_text` adds
one for a ``.svg`` file. Points carry ``<title>`` tooltips.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def text(value: Any) -> str:
    """``value`` as XML character data (forbidden characters dropped, markup escaped)."""
    return escape(_NOT_XML.sub("", str(value)))


def attr(value: Any) -> str:
    """``value`` as a quoted XML attribute value."""
    return quoteattr(_NOT_XML.sub("", str(value)))


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def svg_file_text(svg: str) -> str:
    """``svg`` with an XML declaration, for writing a ``.svg`` file."""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + svg


def open_svg(width: float, height: float, title: str) -> list[str]:
    """The opening ``<svg>`` tag, its ``<title>`` (the tooltip) and the white background."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
        f"<title>{text(title)}</title>",
        f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]


def title_text(width: float, title: str, y: int = 22) -> str:
    """The figure's bold title, centred at the top."""
    return (f'<text class="title" x="{width / 2:.2f}" y="{y}" text-anchor="middle" '
            f'font-size="14" font-weight="bold">{text(title)}</text>')


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of
    ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return [t for t in ticks if t >= lo - step * 1e-9]


def tick_label(value: float) -> str:
    return f"{value:.4g}" if value != 0 else "0"


@dataclass
class Series:
    """One line: ``ys[i]`` at ``xs[i]`` (None or NaN: a gap); ``tips[i]`` the tooltip of point
    i."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str
    tips: Sequence[str] | None = None
    dashed: bool = False


@dataclass
class Panel:
    """One chart: its series share the axes; ``ylim``/``xlim`` fix a range (default: the data's,
    padded)."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    xlim: tuple[float, float] | None = None
    integer_x: bool = False  # x ticks at whole numbers only (epochs)


@dataclass
class Axes:
    """A plotting area in pixels and the data ranges it maps: ``px``/``py`` convert."""

    left: float
    top: float
    right: float
    bottom: float
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, v: float) -> float:
        return self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def data_range(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def axes_parts(ax: Axes, panel_title: str, xlabel: str, ylabel: str, *, grid: bool = True,
               integer_x: bool = False) -> list[str]:
    parts = []
    for v in nice_ticks(ax.y0, ax.y1):
        y = ax.py(v)
        if grid:
            parts.append(f'<line class="grid" x1="{ax.left:.2f}" y1="{y:.2f}" '
                         f'x2="{ax.right:.2f}" y2="{y:.2f}" stroke="#e5e5e5" stroke-width="1"/>')
        parts += [f'<line class="tick" x1="{ax.left - 5:.2f}" y1="{y:.2f}" x2="{ax.left:.2f}" '
                  f'y2="{y:.2f}" stroke="#333"/>',
                  f'<text class="tick-label" x="{ax.left - 7:.2f}" y="{y + 4:.2f}" '
                  f'text-anchor="end">{text(tick_label(v))}</text>']
    xticks = nice_ticks(ax.x0, ax.x1)
    if integer_x:
        xticks = sorted({float(round(v)) for v in xticks if abs(v - round(v)) < 1e-9}) or [
            float(round(ax.x0))]
    for v in xticks:
        x = ax.px(v)
        parts += [f'<line class="tick" x1="{x:.2f}" y1="{ax.bottom:.2f}" x2="{x:.2f}" '
                  f'y2="{ax.bottom + 5:.2f}" stroke="#333"/>',
                  f'<text class="tick-label" x="{x:.2f}" y="{ax.bottom + 18:.2f}" '
                  f'text-anchor="middle">{text(tick_label(v))}</text>']
    mid_x, mid_y = (ax.left + ax.right) / 2, (ax.top + ax.bottom) / 2
    parts += [
        f'<rect class="frame" x="{ax.left:.2f}" y="{ax.top:.2f}" width="{ax.right - ax.left:.2f}" '
        f'height="{ax.bottom - ax.top:.2f}" fill="none" stroke="#333"/>',
        f'<text class="axis-label" x="{mid_x:.2f}" y="{ax.bottom + 34:.2f}" '
        f'text-anchor="middle">{text(xlabel)}</text>',
        f'<text class="axis-label" x="{ax.left - 48:.2f}" y="{mid_y:.2f}" text-anchor="middle" '
        f'transform="rotate(-90 {ax.left - 48:.2f} {mid_y:.2f})">{text(ylabel)}</text>',
        f'<text class="panel-title" x="{mid_x:.2f}" y="{ax.top - 8:.2f}" text-anchor="middle" '
        f'font-weight="bold">{text(panel_title)}</text>',
    ]
    return parts


def series_parts(ax: Axes, series: Series) -> list[str]:
    parts = []
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(series.xs, series.ys, strict=True):
        if finite(x) and finite(y):
            runs[-1].append((ax.px(x), ax.py(y)))
        elif runs[-1]:
            runs.append([])
    dash = ' stroke-dasharray="5 3"' if series.dashed else ""
    for run in runs:
        if len(run) > 1:
            points = " ".join(f"{x:.2f},{y:.2f}" for x, y in run)
            parts.append(f'<polyline class="line" data-series={attr(series.label)} '
                         f'points="{points}" fill="none" stroke="{series.color}" '
                         f'stroke-width="1.8"{dash}/>')
    for i, (x, y) in enumerate(zip(series.xs, series.ys, strict=True)):
        if not (finite(x) and finite(y)):
            continue
        tip = series.tips[i] if series.tips else f"{series.label}: ({x:.4g}, {y:.4g})"
        parts.append(f'<circle class="point" data-series={attr(series.label)} '
                     f'cx="{ax.px(x):.2f}" cy="{ax.py(y):.2f}" r="3" fill="{series.color}">'
                     f"<title>{text(tip)}</title></circle>")
    return parts


def legend_parts(entries: list[tuple[str, str, bool]], x: float, y: float,
                 width: float) -> tuple[list[str], float]:
    """Legend entries (label, color, dashed) in rows from (x, y) within ``width``; returns the
    parts and the height used."""
    parts = ['<g class="legend">']
    cx, cy, line = x, y, 18.0
    for label, col, dashed in entries:
        w = 34 + 6.8 * len(label)
        if cx > x and cx + w > x + width:
            cx, cy = x, cy + line
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts += [f'<line x1="{cx:.2f}" y1="{cy + 6:.2f}" x2="{cx + 20:.2f}" y2="{cy + 6:.2f}" '
                  f'stroke="{col}" stroke-width="2.5"{dash}/>',
                  f'<text class="legend-label" x="{cx + 25:.2f}" y="{cy + 10:.2f}">'
                  f"{text(label)}</text>"]
        cx += w + 12
    parts.append("</g>")
    return parts, (cy - y) + line if entries else 0.0


def panels_svg(panels: Sequence[Panel], *, title: str | None = None, columns: int = 2,
               panel_width: int = 360, panel_height: int = 280,
               legend: Sequence[tuple[str, str]] | None = None) -> str:
    """Charts side by side (``columns`` per row) with one shared legend below: ``legend`` as
    (label, color) pairs, by default every series label once."""
    columns = max(1, min(columns, len(panels) or 1))
    rows = max(1, math.ceil(len(panels) / columns))
    width = columns * panel_width
    head = 34.0 if title else 6.0
    if legend is None:
        seen: dict[str, tuple[str, str, bool]] = {}
        for panel in panels:
            for s in panel.series:
                seen.setdefault(s.label, (s.label, s.color, s.dashed))
        entries = list(seen.values())
    else:
        entries = [(label, col, False) for label, col in legend]
    legend_svg, legend_height = legend_parts(entries, 16, head + rows * panel_height + 4,
                                             width - 32)
    height = int(head + rows * panel_height + legend_height + 12)
    parts = open_svg(width, height, title or ", ".join(p.title for p in panels))
    if title:
        parts.append(title_text(width, title))
    for k, panel in enumerate(panels):
        ox = (k % columns) * panel_width
        oy = head + (k // columns) * panel_height
        xs = [x for s in panel.series for x, y in zip(s.xs, s.ys, strict=True)
              if finite(x) and finite(y)]
        ys = [y for s in panel.series for x, y in zip(s.xs, s.ys, strict=True)
              if finite(x) and finite(y)]
        x0, x1 = data_range(xs, panel.xlim)
        y0, y1 = data_range(ys, panel.ylim)
        ax = Axes(ox + 62, oy + 26, ox + panel_width - 14, oy + panel_height - 46, x0, x1, y0,
                  y1)
        parts += axes_parts(ax, panel.title, panel.xlabel, panel.ylabel,
                            integer_x=panel.integer_x)
        for s in panel.series:
            parts += series_parts(ax, s)
        if not ys:
            parts.append(f'<text class="empty" x="{(ax.left + ax.right) / 2:.2f}" '
                         f'y="{(ax.top + ax.bottom) / 2:.2f}" text-anchor="middle" '
                         f'fill="#777">no data</text>')
    parts += legend_svg
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
