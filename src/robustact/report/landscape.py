"""The loss-landscape figure: a banded heat map and the two slices through the clean input."""

from __future__ import annotations

import math
from typing import Any

from robustact.report.svg import (
    Axes,
    Series,
    axes_parts,
    color,
    data_range,
    legend_parts,
    open_svg,
    series_parts,
    text,
    title_text,
)

# viridis at 9 evenly spaced stops (dark blue = low loss, yellow = high loss)
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962",
           "#addc30", "#fde725")
WIDTH = 800


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
    head = 34.0
    ax = Axes(66, head + 20, 66 + 270, head + 20 + 250, alphas[0], alphas[-1], betas[0],
              betas[-1])
    lo = min(min(r) for r in loss)
    hi = max(max(r) for r in loss)
    parts = _heatmap_parts(ax, alphas, betas, loss, levels)
    parts += axes_parts(ax, "loss (heat map)", "alpha: gradient sign direction",
                        "beta: random direction", grid=False)
    parts += _colorbar(ax.right + 14, ax.top, ax.bottom, lo, hi, levels)
    slices, bottom = _slice_parts(ax, alphas, betas, loss)
    height = int(max(bottom, ax.bottom + 44) + 8)
    name = title or "Loss landscape"
    header = [*open_svg(WIDTH, height, name), title_text(WIDTH, name)]
    return "\n".join([*header, *parts, *slices, "</svg>"]) + "\n"


def _edges(values: list[float]) -> list[float]:
    mids = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
    return [values[0], *mids, values[-1]]


def _heatmap_parts(ax: Axes, alphas: list[float], betas: list[float], loss: list[list[float]],
                   levels: int) -> list[str]:
    """One banded cell per grid point, then a cross at the clean input (if inside the grid)."""
    lo = min(min(r) for r in loss)
    span = max(max(r) for r in loss) - lo or 1.0
    ea, eb = _edges(alphas), _edges(betas)
    parts = ['<g class="heatmap">']
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
    return parts


def _slice_parts(ax: Axes, alphas: list[float], betas: list[float],
                 loss: list[list[float]]) -> tuple[list[str], float]:
    """The 1-D slices through the origin, right of the heat map ``ax``; returns the parts and
    the bottom of their legend."""
    ia = min(range(len(betas)), key=lambda j: abs(betas[j]))  # beta closest to 0
    ib = min(range(len(alphas)), key=lambda i: abs(alphas[i]))  # alpha closest to 0
    grad_slice = [loss[i][ia] for i in range(len(alphas))]
    rand_slice = [loss[ib][j] for j in range(len(betas))]
    y0, y1 = data_range(grad_slice + rand_slice, None)
    offsets = alphas + betas
    sx = Axes(ax.right + 160, ax.top, WIDTH - 16, ax.bottom, min(offsets), max(offsets), y0, y1)
    parts = axes_parts(sx, "slices through the clean input", "offset (pixel scale)", "loss")
    lines = [Series("gradient direction (beta = 0)", alphas, grad_slice, color(0),
                    [f"alpha {a:.4g}: loss {v:.4g}" for a, v in zip(alphas, grad_slice,
                                                                    strict=True)]),
             Series("random direction (alpha = 0)", betas, rand_slice, color(1),
                    [f"beta {b:.4g}: loss {v:.4g}" for b, v in zip(betas, rand_slice,
                                                                   strict=True)], dashed=True)]
    for s in lines:
        parts += series_parts(sx, s)
    legend, used = legend_parts([(s.label, s.color, s.dashed) for s in lines], sx.left - 60,
                                sx.bottom + 44, sx.right - sx.left + 60)
    return parts + legend, sx.bottom + 44 + used


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
