"""Calibration: does a model's confidence match its accuracy, on clean and adversarial inputs?

    rel = calibrate(model, x, y, n_samples=32)    # a randomized model: softmax averaged 32 times
    rel.ece, rel.mce                              # expected / maximum calibration error
    svg = reliability_svg({"clean": rel, "lambda=8": rel_adv}, title="SAP-100")

Confidence is the largest predicted probability; a bin's accuracy is the fraction of its examples
whose most probable class is the label (Guo et al. 2017). With ``bins`` equal-width bins over
[0, 1], bin ``b`` holds the confidences in ``[b / bins, (b + 1) / bins)`` and the last bin also
holds 1.0. ``strategy="mass"`` puts the edges at the quantiles of the confidences instead, so the
bins hold (about) equally many examples. Then

    ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|,   MCE = max_b |...|  (non-empty b)

The SAP paper (Dhillon et al. 2018) compares such reliability diagrams of deterministic and
stochastic models at several perturbation sizes; a stochastic model's probabilities are averaged
over ``n_samples`` forward passes, as in :func:`robustact.eval.robustness.predict`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import torch
from torch import nn

from robustact.errors import ConfigError

STRATEGIES = ("width", "mass")
SUM_TOLERANCE = 1e-3  # |row sum - 1| allowed in probabilities (float32/float16 softmax rounding)


@dataclass
class Reliability:
    """A reliability diagram and its summary numbers (fractions in [0, 1]).

    Per bin (``len(counts) == bins``, ``len(edges) == bins + 1``): ``counts`` examples, their
    mean confidence ``bin_confidence`` and accuracy ``bin_accuracy`` (None for an empty bin).
    Overall: ``ece``, ``mce``, top-1 ``accuracy``, mean ``confidence``, ``n`` examples.
    """

    edges: list[float]
    counts: list[int]
    bin_confidence: list[float | None]
    bin_accuracy: list[float | None]
    ece: float
    mce: float
    accuracy: float
    confidence: float
    n: int
    strategy: str = "width"

    @property
    def bins(self) -> int:
        return len(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (``json.dumps(..., allow_nan=False)`` accepts it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reliability:
        """The inverse of :meth:`to_dict` (e.g. a stored record rendered later)."""
        required = [name for name in cls.__dataclass_fields__ if name != "strategy"]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"reliability record lacks the fields {', '.join(missing)}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15,
                               strategy: str = "width") -> float:
    """ECE of (N, K) probabilities against (N,) integer labels, in [0, 1].

    ``strategy``: ``"width"`` (``bins`` equal-width bins over [0, 1]) or ``"mass"`` (edges at
    the confidence quantiles, equally many examples per bin).
    """
    return reliability(probs, labels, bins=bins, strategy=strategy).ece


def reliability(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15,
                strategy: str = "width") -> Reliability:
    """The reliability diagram of (N, K) probabilities against (N,) integer labels.

    Raises ConfigError for empty input, mismatched shapes, rows that are not probability
    distributions (e.g. logits) or labels outside ``[0, K)``.
    """
    probs, labels = _check_inputs(probs, labels)
    _check_bins(bins, strategy)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    edges = _edges(confidence, bins, strategy)
    index = (torch.searchsorted(edges, confidence, right=True) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    n = labels.shape[0]
    filled = counts > 0
    gaps = (correct_sum - conf_sum).abs()
    mean_conf = (conf_sum / counts.clamp(min=1)).tolist()
    mean_acc = (correct_sum / counts.clamp(min=1)).tolist()
    keep = filled.tolist()
    return Reliability(
        edges=edges.tolist(),
        counts=counts.tolist(),
        bin_confidence=[c if k else None for c, k in zip(mean_conf, keep, strict=True)],
        bin_accuracy=[a if k else None for a, k in zip(mean_acc, keep, strict=True)],
        ece=(gaps.sum() / n).item(),
        mce=(gaps[filled] / counts[filled]).max().item(),
        accuracy=correct.mean().item(),
        confidence=confidence.mean().item(),
        n=n,
        strategy=strategy,
    )


def _check_inputs(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels)
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ConfigError(f"probabilities must be (N, K) and labels (N,), got "
                          f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ConfigError("no examples to calibrate: give at least one (probability, label)")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(device=probs.device, dtype=torch.long)
    probs = probs.double()
    if not torch.isfinite(probs).all() or probs.min() < -SUM_TOLERANCE:
        raise ConfigError("probabilities must be finite and >= 0; pass softmax outputs")
    deviation = (probs.sum(dim=1) - 1).abs()
    if deviation.max() > SUM_TOLERANCE:
        row = int(deviation.argmax())
        raise ConfigError(f"probabilities must sum to 1 per row (row {row} sums to "
                          f"{probs[row].sum().item():.4g}); pass softmax outputs, not logits")
    k = probs.shape[1]
    if labels.min() < 0 or labels.max() >= k:
        raise ConfigError(f"labels must lie in [0, {k}) for {k} classes, got "
                          f"{int(labels.min())}..{int(labels.max())}")
    return probs, labels


def _check_bins(bins: int, strategy: str) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown binning strategy {strategy!r}; use one of "
                          f"{', '.join(STRATEGIES)}")


def _edges(confidence: torch.Tensor, bins: int, strategy: str) -> torch.Tensor:
    """(bins + 1,) float64 edges: i / bins, or the i / bins quantiles (linear interpolation,
    as numpy's default) of the confidences."""
    steps = torch.arange(bins + 1, dtype=torch.float64, device=confidence.device)
    if strategy == "width":
        return steps / bins
    ordered = confidence.sort().values
    position = steps / bins * (ordered.shape[0] - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=ordered.shape[0] - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, *, n_samples: int = 1,
                  batch_size: int = 512) -> torch.Tensor:
    """(N, K) float32 softmax probabilities on the CPU, averaged over ``n_samples`` forward
    passes (a randomized model such as SAP stays random in eval mode).

    ``x``: (N, ...) inputs in [0, 1]. The model runs in eval mode on the device of its
    parameters, without gradients; its previous mode is restored.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ConfigError("no examples to predict: x must be a non-empty (N, ...) batch")
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else x.device
    was_training = model.training
    model.eval()
    out = []
    try:
        for lo in range(0, x.shape[0], batch_size):
            xb = x[lo:lo + batch_size].to(device)
            probs = _softmax(model, xb)
            for _ in range(n_samples - 1):
                probs += _softmax(model, xb)
            out.append((probs / n_samples).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def _softmax(model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    logits = model(xb)
    if logits.ndim != 2 or logits.shape[0] != xb.shape[0]:
        raise ConfigError(f"the model must return (N, K) logits, got shape {tuple(logits.shape)}")
    return logits.float().softmax(1)


def calibrate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_samples: int = 1,
              bins: int = 15, strategy: str = "width", batch_size: int = 512) -> Reliability:
    """The reliability diagram of ``model`` on inputs ``x`` (N, ...) with labels ``y`` (N,);
    see :func:`predict_proba` and :func:`reliability`."""
    _check_bins(bins, strategy)
    probs = predict_proba(model, x, n_samples=n_samples, batch_size=batch_size)
    return reliability(probs, torch.as_tensor(y).cpu(), bins=bins, strategy=strategy)


# --- SVG rendering --------------------------------------------------------------------------

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
GAP_COLOR = "#d62728"
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
        f"<title>{_text(title or 'Reliability diagram')}</title>",
        f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        *_axes(plot),
    ]
    for j, (label, rel) in enumerate(series):
        parts += _bars(plot, j, len(series), label, rel, gaps)
    x0, y0, x1, y1 = plot.x(0), plot.y(0), plot.x(1), plot.y(1)
    parts.append(f'<line class="diagonal" x1="{x0:.2f}" y1="{y0:.2f}" x2="{x1:.2f}" '
                 f'y2="{y1:.2f}" stroke="#444" stroke-width="1" stroke-dasharray="4 3"/>')
    parts += _legend(plot, series, gaps)
    if title:
        parts.append(f'<text class="title" x="{width / 2:.2f}" y="24" text-anchor="middle" '
                     f'font-size="14" font-weight="bold">{_text(title)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def save_reliability_svg(path: str | Path, diagrams: Mapping[str, Reliability] | Reliability,
                         **kwargs: Any) -> Path:
    """Write :func:`reliability_svg` (with an XML declaration) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    svg = reliability_svg(diagrams, **kwargs)
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + svg, encoding="utf-8")
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
            f'<rect class="bar" data-series={_attr(name)} data-bin="{b}" x="{x:.2f}" '
            f'y="{top:.2f}" width="{slot:.2f}" height="{plot.bottom - top:.2f}" '
            f'fill="{color}" fill-opacity="0.85" stroke="#fff" stroke-width="0.5">'
            f"<title>{_text(tip)}</title></rect>")
        if gaps:
            y0, y1 = sorted((plot.y(acc), plot.y(conf)))
            parts.append(
                f'<rect class="gap" data-series={_attr(name)} data-bin="{b}" x="{x:.2f}" '
                f'y="{y0:.2f}" width="{slot:.2f}" height="{y1 - y0:.2f}" fill="{GAP_COLOR}" '
                f'fill-opacity="0.25" stroke="{GAP_COLOR}" stroke-width="0.8"/>')
    return parts


def _legend(plot: _Plot, series: list[tuple[str | None, Reliability]], gaps: bool) -> list[str]:
    entries = []
    for j, (label, rel) in enumerate(series):
        numbers = f"acc {100 * rel.accuracy:.1f}%, ECE {100 * rel.ece:.1f}%"
        text = f"{label} ({numbers})" if label is not None else f"{numbers}, n={rel.n}"
        entries.append((PALETTE[j % len(PALETTE)], "0.85", text))
    if gaps:
        entries.append((GAP_COLOR, "0.25", "gap to mean confidence"))
    line = 16.0
    box_w = min(plot.right - plot.left - 12, 28 + 6.6 * max(len(t) for *_, t in entries))
    x, y = plot.left + 6, plot.top + 6
    parts = [f'<g class="legend"><rect x="{x:.2f}" y="{y:.2f}" width="{box_w:.2f}" '
             f'height="{8 + line * len(entries):.2f}" fill="#fff" fill-opacity="0.85" '
             f'stroke="#bbb"/>']
    for i, (color, opacity, text) in enumerate(entries):
        row = y + 4 + i * line
        parts += [
            f'<rect x="{x + 6:.2f}" y="{row + 2:.2f}" width="12" height="10" fill="{color}" '
            f'fill-opacity="{opacity}"/>',
            f'<text class="legend-label" x="{x + 24:.2f}" y="{row + 11:.2f}">{_text(text)}</text>',
        ]
    parts.append("</g>")
    return parts


def _text(value: str) -> str:
    """``value`` as XML character data: characters XML forbids dropped, markup escaped."""
    return escape(_NOT_XML.sub("", value))


def _attr(value: str) -> str:
    """``value`` as a quoted XML attribute value."""
    return quoteattr(_NOT_XML.sub("", value))
