"""The reliability-diagram figure of one or more :class:`robustact.eval.calibration.Reliability`.

    svg = reliability_svg({"clean": rel, "lambda=8": rel_adv}, title="SAP-100")
    save_reliability_svg("figures/rel.svg", rel)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.eval.calibration import Reliability
from robustact.files import write_atomic
from robustact.report.svg import PALETTE, attr, open_svg, svg_file_text, text, title_text

GAP_COLOR = "#d62728"


def reliability_svg(diagrams: Mapping[str, Reliability] | Reliability, *,
                    title: str | None = None, width: int = 440, height: int = 420,
                    gaps: bool | None = None) -> str:
    """A standalone SVG reliability diagram (no ``<?xml?>`` line, so it can be inlined in HTML).

    One bar per non-empty bin and diagram: its height is the bin's accuracy, it spans the bin
    (several diagrams share the bin side by side). The dashed diagonal is perfect calibration;
    ``gaps`` (default: only for a single diagram) shades the gap between a bin's accuracy and
    mean confidence. The legend names each diagram with its accuracy and ECE. ``width`` and
    ``height`` are in pixels.
    """
    series = _series(diagrams)
    if width < 160 or height < 160:
        raise ConfigError(f"width and height must be at least 160 pixels, got {width}x{height}")
    gaps = len(series) == 1 if gaps is None else gaps
    plot = _Plot(left=56.0, top=40.0 if title else 16.0, right=width - 16.0, bottom=height - 44.0)
    parts = [*open_svg(width, height, title or "Reliability diagram"), *_axes(plot)]
    for j, (label, rel) in enumerate(series):
        parts += _bars(plot, j, len(series), label, rel, gaps)
    x0, y0, x1, y1 = plot.x(0), plot.y(0), plot.x(1), plot.y(1)
    parts.append(f'<line class="diagonal" x1="{x0:.2f}" y1="{y0:.2f}" x2="{x1:.2f}" '
                 f'y2="{y1:.2f}" stroke="#444" stroke-width="1" stroke-dasharray="4 3"/>')
    parts += _legend(plot, series, gaps)
    if title:
        parts.append(title_text(width, title, y=24))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def save_reliability_svg(path: str | Path, diagrams: Mapping[str, Reliability] | Reliability,
                         **kwargs: Any) -> Path:
    """Write :func:`reliability_svg` (with an XML declaration) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, svg_file_text(reliability_svg(diagrams, **kwargs)))
    return path


@dataclass
class _Plot:
    """The plotting area in pixels; ``x`` and ``y`` map [0, 1] data coordinates into it."""

    left: float
    top: float
    right: float
    bottom: float

    def x(self, value: float) -> float:
        return self.left + value * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - value * (self.bottom - self.top)


def _series(diagrams: Mapping[str, Reliability] | Reliability) -> list[tuple[str | None,
                                                                              Reliability]]:
    if isinstance(diagrams, Reliability):
        return [(None, diagrams)]
    if not isinstance(diagrams, Mapping) or not diagrams:
        raise ConfigError("give a Reliability or a non-empty dict of label -> Reliability")
    for label, rel in diagrams.items():
        if not isinstance(rel, Reliability):
            raise ConfigError(f"diagram {label!r} is a {type(rel).__name__}, not a Reliability; "
                              "build it with reliability() or Reliability.from_dict()")
    return [(str(label), rel) for label, rel in diagrams.items()]


def _axes(plot: _Plot) -> list[str]:
    parts = []
    for i in range(6):
        v = i / 5
        x, y = plot.x(v), plot.y(v)
        parts += [
            f'<line class="grid" x1="{plot.left:.2f}" y1="{y:.2f}" x2="{plot.right:.2f}" '
            f'y2="{y:.2f}" stroke="#e5e5e5" stroke-width="1"/>',
            f'<line class="tick" x1="{x:.2f}" y1="{plot.bottom:.2f}" x2="{x:.2f}" '
            f'y2="{plot.bottom + 5:.2f}" stroke="#333"/>',
            f'<line class="tick" x1="{plot.left - 5:.2f}" y1="{y:.2f}" x2="{plot.left:.2f}" '
            f'y2="{y:.2f}" stroke="#333"/>',
            f'<text class="tick-label" x="{x:.2f}" y="{plot.bottom + 18:.2f}" '
            f'text-anchor="middle">{v:.1f}</text>',
            f'<text class="tick-label" x="{plot.left - 8:.2f}" y="{y + 4:.2f}" '
            f'text-anchor="end">{v:.1f}</text>',
        ]
    mid_x, mid_y = (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2
    parts += [
        f'<rect class="frame" x="{plot.left:.2f}" y="{plot.top:.2f}" '
        f'width="{plot.right - plot.left:.2f}" height="{plot.bottom - plot.top:.2f}" '
        f'fill="none" stroke="#333"/>',
        f'<text class="axis-label" x="{mid_x:.2f}" y="{plot.bottom + 36:.2f}" '
        f'text-anchor="middle">Confidence</text>',
        f'<text class="axis-label" x="16" y="{mid_y:.2f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {mid_y:.2f})">Accuracy</text>',
    ]
    return parts


def _bars(plot: _Plot, j: int, total: int, label: str | None, rel: Reliability,
          gaps: bool) -> list[str]:
    color = PALETTE[j % len(PALETTE)]
    name = label if label is not None else "model"
    parts = []
    for b, count in enumerate(rel.counts):
        acc, conf = rel.bin_accuracy[b], rel.bin_confidence[b]
        if count == 0 or acc is None or conf is None:
            continue
        lo, hi = rel.edges[b], rel.edges[b + 1]
        x0, x1 = plot.x(lo), plot.x(hi)
        pad = min(1.0, (x1 - x0) / 4)
        slot = (x1 - x0 - 2 * pad) / total
        x = x0 + pad + j * slot
        top = plot.y(acc)
        close = "]" if b == len(rel.counts) - 1 else ")"
        tip = (f"{name}: confidence [{lo:.3f}, {hi:.3f}{close}, n={count}, accuracy {acc:.3f}, "
               f"mean confidence {conf:.3f}")
        parts.append(
            f'<rect class="bar" data-series={attr(name)} data-bin="{b}" x="{x:.2f}" '
            f'y="{top:.2f}" width="{slot:.2f}" height="{plot.bottom - top:.2f}" '
            f'fill="{color}" fill-opacity="0.85" stroke="#fff" stroke-width="0.5">'
            f"<title>{text(tip)}</title></rect>")
        if gaps:
            y0, y1 = sorted((plot.y(acc), plot.y(conf)))
            parts.append(
                f'<rect class="gap" data-series={attr(name)} data-bin="{b}" x="{x:.2f}" '
                f'y="{y0:.2f}" width="{slot:.2f}" height="{y1 - y0:.2f}" fill="{GAP_COLOR}" '
                f'fill-opacity="0.25" stroke="{GAP_COLOR}" stroke-width="0.8"/>')
    return parts


def _legend(plot: _Plot, series: list[tuple[str | None, Reliability]], gaps: bool) -> list[str]:
    entries = []
    for j, (label, rel) in enumerate(series):
        numbers = f"acc {100 * rel.accuracy:.1f}%, ECE {100 * rel.ece:.1f}%"
        line = f"{label} ({numbers})" if label is not None else f"{numbers}, n={rel.n}"
        entries.append((PALETTE[j % len(PALETTE)], "0.85", line))
    if gaps:
        entries.append((GAP_COLOR, "0.25", "gap to mean confidence"))
    line_height = 16.0
    box_w = min(plot.right - plot.left - 12, 28 + 6.6 * max(len(t) for *_, t in entries))
    x, y = plot.left + 6, plot.top + 6
    parts = [f'<g class="legend"><rect x="{x:.2f}" y="{y:.2f}" width="{box_w:.2f}" '
             f'height="{8 + line_height * len(entries):.2f}" fill="#fff" fill-opacity="0.85" '
             f'stroke="#bbb"/>']
    for i, (color, opacity, label) in enumerate(entries):
        row = y + 4 + i * line_height
        parts += [
            f'<rect x="{x + 6:.2f}" y="{row + 2:.2f}" width="12" height="10" fill="{color}" '
            f'fill-opacity="{opacity}"/>',
            f'<text class="legend-label" x="{x + 24:.2f}" y="{row + 11:.2f}">{text(label)}</text>',
        ]
    parts.append("</g>")
    return parts
