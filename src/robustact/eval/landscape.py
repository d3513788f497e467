"""The loss landscape around a batch of inputs: along the adversarial direction and a random one.

    payload = loss_landscape(model, x, y, eps=0.1, steps=21)
    store.record_artifact(run_id, "landscape", "test", payload)   # rendered by the report

The k-WTA paper's README figure: the loss of a k-WTA network, seen along the sign of the input
gradient and a random sign direction, is jagged (the gradient says little about the loss a small
step away), while a ReLU network's is smooth. The grid is

    loss[i][j] = mean_n CE(model(clip(x_n + alphas[i] * g_n + betas[j] * r_n, 0, 1)), y_n)

with ``g_n = sign(grad_x CE(model(x_n), y_n))`` (per example), ``r_n`` a Rademacher (+-1)
direction drawn from ``seed``, and ``alphas`` = ``betas`` = ``steps`` points evenly spaced over
``[-eps, eps]`` (symmetric rather than the README's ``[0, eps]``, so the clean input sits at the
centre and both sides of the gradient direction show; ``steps`` is odd so that 0 is a grid point).
eps is on the [0, 1] pixel scale (an L-infinity step: every pixel moves by at most ``|a| + |b|``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustact.errors import ConfigError

DIRECTION = "gradient x random"


def loss_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   steps: int = 21, n_samples: int = 1, seed: int = 0,
                   batch_size: int = 1024) -> dict[str, Any]:
    """The loss surface of ``model`` around ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,)
    (see the module docstring). JSON-ready dict:

    ``alphas`` (steps,) offsets along the gradient sign, ``betas`` (steps,) along the random
    sign direction, ``loss`` (steps x steps) with ``loss[i][j]`` at (alphas[i], betas[j]),
    ``clean_loss`` (the loss at x), ``direction``, ``eps``, ``steps``, ``n``, ``n_samples``,
    ``seed``.

    A randomized model's losses (and its gradient) are averaged over ``n_samples`` forward
    passes. The model runs in eval mode (its mode is restored) on the device of its parameters;
    only the gradient direction is computed with autograd. ``batch_size``: inputs per forward
    pass (the grid points are batched together).
    """
    _check(x, y, eps, steps, n_samples, batch_size)
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else x.device
    x = x.to(device=device, dtype=torch.float32)
    y = y.to(device=device, dtype=torch.long)
    c = (steps - 1) // 2
    offsets = [eps * (k - c) / c for k in range(steps)]  # exact 0.0 in the middle
    generator = torch.Generator().manual_seed(int(seed))
    r = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(device, x.dtype)
    was_training = model.training
    model.eval()
    try:
        g = _gradient_sign(model, x, y, n_samples)
        with torch.no_grad():
            clean = _losses(model, y, lambda _: x, [None], n_samples, batch_size)[0]
            points = [(a, b) for a in offsets for b in offsets]
            values = _losses(model, y, lambda p: (x + p[0] * g + p[1] * r).clamp(0, 1), points,
                             n_samples, batch_size)
    finally:
        model.train(was_training)
    loss = [values[i * steps:(i + 1) * steps] for i in range(steps)]
    return {"alphas": offsets, "betas": list(offsets), "loss": loss, "clean_loss": clean,
            "direction": DIRECTION, "eps": float(eps), "steps": steps, "n": int(x.shape[0]),
            "n_samples": n_samples, "seed": int(seed)}


def _check(x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, n_samples: int,
           batch_size: int) -> None:
    if x.ndim < 2 or x.shape[0] == 0 or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(f"x must be a non-empty (N, ...) batch and y (N,) labels, got "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    if not 0 < eps <= 1:
        raise ConfigError(f"eps must be in (0, 1] (pixel scale), got {eps}")
    for name, value in (("steps", steps), ("n_samples", n_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if steps < 3 or steps % 2 == 0:
        raise ConfigError(f"steps must be odd and >= 3 (the grid's centre is the clean "
                          f"input), got {steps}")


def _gradient_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   n_samples: int) -> torch.Tensor:
    """sign of the input gradient of the summed cross-entropy (averaged over n_samples)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = sum(F.cross_entropy(model(x).float(), y, reduction="sum")
                   for _ in range(n_samples))
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign().detach()


def _losses(model: nn.Module, y: torch.Tensor, make: Callable[[Any], torch.Tensor],
            points: list[Any], n_samples: int, batch_size: int) -> list[float]:
    """The mean cross-entropy over the batch at the inputs ``make(p)`` (each shaped like the
    batch) of every grid point ``p``, averaged over ``n_samples`` passes. Several points share
    a forward pass of up to ``batch_size`` inputs; the inputs are built one chunk at a time."""
    n = y.shape[0]
    per_pass = max(1, batch_size // n)
    out: list[float] = []
    for lo in range(0, len(points), per_pass):
        chunk = points[lo:lo + per_pass]
        xb = torch.cat([make(p) for p in chunk])
        yb = y.repeat(len(chunk))
        owner = torch.arange(xb.shape[0], device=y.device) // n  # grid point of each input
        total = torch.zeros(len(chunk), dtype=torch.float64, device=y.device)
        for _ in range(n_samples):
            for start in range(0, xb.shape[0], batch_size):
                part = slice(start, start + batch_size)
                ce = F.cross_entropy(model(xb[part]).float(), yb[part], reduction="none")
                total.index_add_(0, owner[part], ce.double())
        out += (total / (n_samples * n)).tolist()
    return out
