"""Calibration: does a model's confidence match its accuracy, on clean and adversarial inputs?

    rel = calibrate(model, x, y, n_samples=32)    # a randomized model: softmax averaged 32 times
    rel.ece, rel.mce                              # expected / maximum calibration error
    rel.to_dict()                                 # the record a report draws its diagram from

Confidence is the largest predicted probability; a bin's accuracy is the fraction of its examples
whose most probable class is the label (Guo et al. 2017). With ``bins`` equal-width bins over
[0, 1], bin ``b`` holds the confidences in ``[b / bins, (b + 1) / bins)`` and the last bin also
holds 1.0. ``strategy="mass"`` puts the edges at the quantiles of the confidences instead, so the
bins hold (about) equally many examples. Then

    ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|,   MCE = max_b |...|  (non-empty b)

The SAP paper (Dhillon et al. 2018) compares such reliability diagrams of deterministic and
stochastic models at several perturbation sizes; a stochastic model's probabilities are averaged
over ``n_samples`` forward passes, as in :func:`robustact.eval.robustness.predict`. The
diagram itself is drawn by :func:`robustact.report.reliability.reliability_svg`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

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


def nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of the (averaged) probabilities."""
    return -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).mean().item()
