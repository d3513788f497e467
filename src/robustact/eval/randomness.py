"""How many passes a randomized model needs: for a stable decision, and for a stable gradient.

- :func:`judge`: per-example correctness of the prediction averaged over ``n_samples`` passes,
  judged twice with independent draws; a point counts as correct only if both judgings say so
  (and as broken, for a probe that must not mistake noise for success, only if both say so),
  and the points on which they disagree (flips) are counted.
- :func:`stable_samples`: the smallest power-of-two number of passes (from ``start``) at which
  two independent judgings of the clean inputs disagree on at most ``max_flip_rate`` of them.
- :func:`stable_eot`: a number of EOT passes (a multiple of ``start``) at which two independent
  EOT estimates of the input gradient agree (median cosine similarity at least ``min_cosine``),
  predicted from one measurement and checked.

A deterministic model needs one pass for both; the functions then return at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robustact.attacks.losses import cross_entropy
from robustact.attacks.wrappers import BPDA, EOT


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, n_samples: int = 1,
            batch_size: int = 512) -> torch.Tensor:
    """(N,) predicted labels; with ``n_samples > 1`` the argmax of the softmax averaged over
    that many forward passes (the prediction of a randomized model)."""
    device = next(model.parameters()).device
    out = []
    for lo in range(0, x.shape[0], batch_size):
        xb = x[lo:lo + batch_size].to(device)
        probs = model(xb).float().softmax(1)
        for _ in range(n_samples - 1):
            probs += model(xb).float().softmax(1)
        out.append(probs.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)


@dataclass
class Judgement:
    """``correct`` (N,) bool on the CPU: right in both judgings; ``broken``: wrong in both;
    ``flips``: points on which the two judgings disagree (0 for a deterministic model, judged
    once)."""

    correct: torch.Tensor
    broken: torch.Tensor
    flips: int


def judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_samples: int,
          randomized: bool) -> Judgement:
    """Correctness of the averaged prediction (see the module docstring)."""
    first = predict(model, x, n_samples).cpu() == y.cpu()
    if not randomized:
        return Judgement(first, ~first, 0)
    second = predict(model, x, n_samples).cpu() == y.cpu()
    return Judgement(first & second, ~first & ~second, int((first != second).sum()))


def stable_samples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, start: int = 8,
                   limit: int = 256, max_flip_rate: float = 0.01) -> int:
    """Passes per prediction at which two judgings of ``x`` disagree on at most
    ``max_flip_rate`` of the points (``limit`` if none does)."""
    n = start
    while n < limit:
        if judge(model, x, y, n, True).flips <= max_flip_rate * len(y):
            return n
        n *= 2
    return limit


def gradient_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    """Median cosine similarity between two independent EOT-``n`` estimates of the input
    gradient of the cross-entropy at ``x``, as the attacks take it
    (:meth:`robustact.attacks.wrappers.EOT.loss_gradient`; 1 = the estimate does not depend on
    the draws)."""
    eot = EOT(BPDA(model), n=n)
    grads = []
    for _ in range(2):
        _, grad, _ = eot.loss_gradient(x.detach(), y, cross_entropy)
        grads.append(grad.flatten(1))
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=1, eps=1e-12)
    return float(cosine.median())


def stable_eot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, start: int = 8,
               limit: int = 128, min_cosine: float = 0.8) -> tuple[int, float]:
    """(EOT passes, their gradient agreement): a multiple of ``start`` whose two independent
    gradient estimates agree to ``min_cosine`` (``limit`` if none up to it does).

    Two estimates of n passes each agree to about ``c(n) = s / (s + v / n)`` (signal s, noise
    v per pass), so one measurement predicts the n that reaches ``min_cosine``. The search
    jumps there (rounded up to a multiple of ``start``; a power of two would overshoot by up to
    2x, and every attack and diagnostic of the evaluation pays for each pass) and, while the
    measured agreement falls short, predicts again from the new measurement, at least one
    ``start`` further."""
    was_training = model.training
    model.eval()
    try:
        n = start
        agreement = gradient_agreement(model, x, y, n)
        while agreement < min_cosine and n < limit:
            n = min(limit, max(n + start, predicted_passes(n, agreement, min_cosine, start)))
            agreement = gradient_agreement(model, x, y, n)
        return n, agreement
    finally:
        model.train(was_training)


def predicted_passes(n: int, agreement: float, target: float, step: int = 8) -> int:
    """The multiple of ``step`` at which ``c(n) = s / (s + v / n)`` reaches ``target``, from
    the agreement ``c(n)`` measured at ``n`` passes (see :func:`stable_eot`)."""
    agreement = min(max(agreement, 1e-3), 1 - 1e-6)
    needed = n * (target / (1 - target)) * ((1 - agreement) / agreement)
    return step * max(1, math.ceil(needed / step))
