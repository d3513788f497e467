"""Hand-written SVG figures for reports: line charts in panels and loss-landscape heat maps.

Same look as :func:`robustact.eval.calibration.reliability_svg` (white background, grey grid,
the same palette, sans-serif 12 px). Every function returns a standalone ``<svg>`` element
without an XML declaration, so it can be inlined in HTML; :func:`svg_file_text` adds one for a
``.svg`` file. Points carry ``<title>`` tooltips.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from robustact.eval.calibration import PALETTE

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# viridis at 9 evenly spaced stops (dark blue = low loss, yellow = high loss)
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962",
           "#addc30", "#fde725")


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
class _Axes:
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


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _range(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
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


def _axes_parts(ax: _Axes, panel_title: str, xlabel: str, ylabel: str, *, grid: bool = True,
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


def _series_parts(ax: _Axes, series: Series) -> list[str]:
    parts = []
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(series.xs, series.ys, strict=True):
        if _finite(x) and _finite(y):
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
        if not (_finite(x) and _finite(y)):
            continue
        tip = series.tips[i] if series.tips else f"{series.label}: ({x:.4g}, {y:.4g})"
        parts.append(f'<circle class="point" data-series={attr(series.label)} '
                     f'cx="{ax.px(x):.2f}" cy="{ax.py(y):.2f}" r="3" fill="{series.color}">'
                     f"<title>{text(tip)}</title></circle>")
    return parts


def _legend_parts(entries: list[tuple[str, str, bool]], x: float, y: float,
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
    legend_parts, legend_height = _legend_parts(entries, 16, head + rows * panel_height + 4,
                                                width - 32)
    height = int(head + rows * panel_height + legend_height + 12)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
        f"<title>{text(title or ', '.join(p.title for p in panels))}</title>",
        f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        parts.append(f'<text class="title" x="{width / 2:.2f}" y="22" text-anchor="middle" '
                     f'font-size="14" font-weight="bold">{text(title)}</text>')
    for k, panel in enumerate(panels):
        ox = (k % columns) * panel_width
        oy = head + (k // columns) * panel_height
        xs = [x for s in panel.series for x, y in zip(s.xs, s.ys, strict=True)
              if _finite(x) and _finite(y)]
        ys = [y for s in panel.series for x, y in zip(s.xs, s.ys, strict=True)
              if _finite(x) and _finite(y)]
        x0, x1 = _range(xs, panel.xlim)
        y0, y1 = _range(ys, panel.ylim)
        ax = _Axes(ox + 62, oy + 26, ox + panel_width - 14, oy + panel_height - 46, x0, x1, y0,
                   y1)
        parts += _axes_parts(ax, panel.title, panel.xlabel, panel.ylabel,
                             integer_x=panel.integer_x)
        for s in panel.series:
            parts += _series_parts(ax, s)
        if not ys:
            parts.append(f'<text class="empty" x="{(ax.left + ax.right) / 2:.2f}" '
                         f'y="{(ax.top + ax.bottom) / 2:.2f}" text-anchor="middle" '
                         f'fill="#777">no data</text>')
    parts += legend_parts
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --- heat maps ------------------------------------------------------------------------------


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def colormap(t: float) -> str:
    """Viridis at ``t`` in [0, 1] (linear between the stops of :data:`VIRIDIS`)."""
    t = min(1.0, max(0.0, t)) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    a, b, f = _hex(VIRIDIS[i]), _hex(VIRIDIS[i + 1]), t - i
    return "#" + "".join(f"{round(u + (v - u) * f):02x}" for u, v in zip(a, b, strict=True))


def check_landscape(payload: Any) -> str | None:
    """None if ``payload`` is a drawable landscape (alphas, betas, loss[len(alphas)][len(betas)]
    of finite numbers), else what is wrong with it."""
    if not isinstance(payload, dict):
        return "the payload is not a dict"
    alphas, betas, loss = payload.get("alphas"), payload.get("betas"), payload.get("loss")
    if not (isinstance(alphas, list) and isinstance(betas, list) and isinstance(loss, list)):
        return "it needs lists alphas, betas and loss"
    if len(alphas) < 2 or len(betas) < 2:
        return "it needs at least 2 alphas and 2 betas"
    if len(loss) != len(alphas) or any(not isinstance(r, list) or len(r) != len(betas)
                                       for r in loss):
        return f"loss must be {len(alphas)} rows of {len(betas)} values"
    values = [alphas, betas, *loss]
    if not all(isinstance(v, int | float) and math.isfinite(v) for row in values for v in row):
        return "it holds values that are not finite numbers"
    return None


def landscape_svg(payload: dict[str, Any], *, title: str | None = None, levels: int = 12) -> str:
    """A loss landscape (the payload of :func:`robustact.eval.landscape.loss_landscape`) as a
    heat map over (alpha: gradient direction, beta: random direction) with a banded colour
    scale of ``levels`` steps (a contour map), the clean input marked at the origin, and beside
    it the two 1-D slices through the origin: along the gradient (beta = 0) and along the random
    direction (alpha = 0). Raises ValueError for a malformed payload (see
    :func:`check_landscape`)."""
    problem = check_landscape(payload)
    if problem:
        raise ValueError(f"not a loss landscape: {problem}")
    alphas, betas, loss = payload["alphas"], payload["betas"], payload["loss"]
    lo = min(min(r) for r in loss)
    hi = max(max(r) for r in loss)
    span = hi - lo or 1.0
    width = 800
    head = 34.0
    ax = _Axes(66, head + 20, 66 + 270, head + 20 + 250, alphas[0], alphas[-1], betas[0],
               betas[-1])
    parts: list[str] = []

    def edges(values: list[float]) -> list[float]:
        mids = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
        return [values[0], *mids, values[-1]]

    ea, eb = edges(alphas), edges(betas)
    parts.append('<g class="heatmap">')
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            band = min(levels - 1, int((loss[i][j] - lo) / span * levels))
            fill = colormap((band + 0.5) / levels)
            x0, x1 = ax.px(ea[i]), ax.px(ea[i + 1])
            y0, y1 = ax.py(eb[j + 1]), ax.py(eb[j])
            parts.append(f'<rect x="{x0:.2f}" y="{y0:.2f}" width="{x1 - x0 + 0.3:.2f}" '
                         f'height="{y1 - y0 + 0.3:.2f}" fill="{fill}"><title>'
                         f"{text(f'alpha {a:.4g}, beta {b:.4g}: loss {loss[i][j]:.4g}')}"
                         "</title></rect>")
    parts.append("</g>")
    if alphas[0] <= 0 <= alphas[-1] and betas[0] <= 0 <= betas[-1]:
        ox, oy = ax.px(0.0), ax.py(0.0)
        parts.append(f'<path class="origin" d="M{ox - 5:.2f},{oy - 5:.2f} L{ox + 5:.2f},'
                     f'{oy + 5:.2f} M{ox - 5:.2f},{oy + 5:.2f} L{ox + 5:.2f},{oy - 5:.2f}" '
                     f'stroke="#fff" stroke-width="2"><title>clean input</title></path>')
    parts += _axes_parts(ax, "loss (heat map)", "alpha: gradient sign direction",
                         "beta: random direction", grid=False)
    parts += _colorbar(ax.right + 14, ax.top, ax.bottom, lo, hi, levels)
    # 1-D slices through the origin
    ia = min(range(len(betas)), key=lambda j: abs(betas[j]))  # beta closest to 0
    ib = min(range(len(alphas)), key=lambda i: abs(alphas[i]))  # alpha closest to 0
    grad_slice = [loss[i][ia] for i in range(len(alphas))]
    rand_slice = [loss[ib][j] for j in range(len(betas))]
    values = grad_slice + rand_slice
    y0, y1 = _range(values, None)
    offsets = alphas + betas
    sx = _Axes(ax.right + 160, ax.top, width - 16, ax.bottom, min(offsets), max(offsets), y0, y1)
    parts += _axes_parts(sx, "slices through the clean input", "offset (pixel scale)", "loss")
    lines = [Series("gradient direction (beta = 0)", alphas, grad_slice, color(0),
                    [f"alpha {a:.4g}: loss {v:.4g}" for a, v in zip(alphas, grad_slice,
                                                                    strict=True)]),
             Series("random direction (alpha = 0)", betas, rand_slice, color(1),
                    [f"beta {b:.4g}: loss {v:.4g}" for b, v in zip(betas, rand_slice,
                                                                   strict=True)], dashed=True)]
    for s in lines:
        parts += _series_parts(sx, s)
    legend, used = _legend_parts([(s.label, s.color, s.dashed) for s in lines], sx.left - 60,
                                 sx.bottom + 44, sx.right - sx.left + 60)
    parts += legend
    height = int(max(sx.bottom + 44 + used, ax.bottom + 44) + 8)
    name = text(title or "Loss landscape")
    header = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
        f"<title>{name}</title>",
        f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text class="title" x="{width / 2:.2f}" y="22" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{name}</text>',
    ]
    return "\n".join([*header, *parts, "</svg>"]) + "\n"


def _colorbar(x: float, top: float, bottom: float, lo: float, hi: float,
              levels: int) -> list[str]:
    parts = ['<g class="colorbar">']
    h = (bottom - top) / levels
    for k in range(levels):
        y = bottom - (k + 1) * h
        parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="14" height="{h + 0.3:.2f}" '
                     f'fill="{colormap((k + 0.5) / levels)}"/>')
    parts.append(f'<rect x="{x:.2f}" y="{top:.2f}" width="14" height="{bottom - top:.2f}" '
                 f'fill="none" stroke="#333"/>')
    for k in range(0, levels + 1, max(1, levels // 4)):
        y = bottom - k * h
        value = lo + (hi - lo) * k / levels
        parts.append(f'<text class="tick-label" x="{x + 18:.2f}" y="{y + 4:.2f}">'
                     f"{text(f'{value:.3g}')}</text>")
    parts.append("</g>")
    return parts
