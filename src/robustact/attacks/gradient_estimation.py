"""Gradient-estimation attack of Tramer, Carlini, Brendel, Madry 2020 ("On Adaptive Attacks to
Adversarial Example Defenses", arXiv 2002.08347), the attack that broke k-WTA: finite differences
with antithetic Gaussian samples estimate the gradient of a margin loss, then signed steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, subset_queries
from robustact.attacks.losses import LossFn, margin
from robustact.attacks.pgd import step_direction
from robustact.attacks.registry import ATTACKS
from robustact.errors import ConfigError


def antithetic_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, samples: int = 100,
    sigma: float = 0.031, max_batch: int = 4096, loss_fn: LossFn = margin,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Estimate of the gradient of ``loss_fn`` at each example of x, shape like x.

    g = 1/(2 sigma m) sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i with m = samples / 2
    pairs u_i ~ N(0, I); an unbiased estimate of the gradient of the Gaussian-smoothed loss.
    The model sees x +- sigma u_i unclipped (they can leave [0, 1] by a few sigma), in forwards
    of at most ``max_batch`` images. ``index`` (batch positions of x's rows) makes a
    :class:`~robustact.attacks.base.QueryCounter` charge ``samples`` queries to each example.
    """
    pairs = samples // 2
    if pairs < 1 or samples % 2:
        raise ConfigError(f"gradest: samples must be an even number >= 2, got {samples}")
    n = x.shape[0]
    grad = torch.zeros_like(x)
    chunk = max(1, max_batch // 2)
    for lo in range(0, n * pairs, chunk):
        ex = torch.arange(lo, min(lo + chunk, n * pairs), device=x.device) // pairs
        u = torch.randn((ex.numel(), *x.shape[1:]), device=x.device, dtype=x.dtype)
        xe = x[ex]
        both = torch.cat([xe + sigma * u, xe - sigma * u])
        rows = index[ex] if index is not None else ex
        with subset_queries(model, torch.cat([rows, rows])), torch.no_grad():
            loss = loss_fn(model(both), torch.cat([y[ex], y[ex]]))
        diff = (loss[:ex.numel()] - loss[ex.numel():]).to(x.dtype)
        grad.index_add_(0, ex, diff.view(-1, *([1] * (x.dim() - 1))) * u)
    return grad / (2 * sigma * pairs)


@ATTACKS.register()
class GradientEstimation(Attack):
    """Signed gradient steps on an estimated gradient of the margin loss (Tramer et al. 2020).

    Each step estimates, for every example still correctly classified, the gradient of the margin
    loss (best other logit minus true logit, i.e. it lowers true-minus-best-other) with
    :func:`antithetic_gradient`, steps ``x <- P(x + step_size * sign(g))`` (normalised g for L2)
    and queries the new point once. An example is frozen (never queried or moved again) as soon
    as it is misclassified, including examples misclassified before the attack. Queries per step
    and active example: ``samples + 1``.

    Args:
        eps: radius on the [0, 1] scale (Tramer et al.: L-inf 0.031 on CIFAR-10).
        steps: iterations (Tramer et al.: up to 100).
        samples: model queries per gradient estimate, in antithetic pairs (100 = 50 pairs).
        sigma: std of the Gaussian samples on the [0, 1] pixel scale; 0.031 ~ 8/255, the value
            the k-WTA break used.
        step_size: default eps / 10 (our choice: reaches the ball's surface in 10 steps, leaving
            90 for refinement).
        max_batch: most images per forward pass when evaluating the samples.
    """

    name = "gradest"
    gradient_free = True

    def __init__(
        self, *, eps: float, norm: str = "linf", steps: int = 100, samples: int = 100,
        sigma: float = 0.031, step_size: float | None = None, max_batch: int = 4096,
        batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        if steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {steps}")
        if samples < 2 or samples % 2:
            raise ConfigError(f"{self.name}: samples must be an even number >= 2 (antithetic "
                              f"pairs), got {samples}")
        if not sigma > 0:
            raise ConfigError(f"{self.name}: sigma must be > 0, got {sigma}")
        if step_size is None:
            step_size = self.eps / 10
        if not step_size >= 0:
            raise ConfigError(f"{self.name}: step_size must be >= 0, got {step_size}")
        if max_batch < 2:
            raise ConfigError(f"{self.name}: max_batch must be >= 2 (one antithetic pair), "
                              f"got {max_batch}")
        self.steps = int(steps)
        self.samples = int(samples)
        self.sigma = float(sigma)
        self.step_size = float(step_size)
        self.max_batch = int(max_batch)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "steps": self.steps, "samples": self.samples,
                "sigma": self.sigma, "step_size": self.step_size, "max_batch": self.max_batch,
                "loss": "margin"}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(x)
        loss = margin(logits, y)
        active = logits.argmax(1) == y
        x_adv = x.clone()
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            grad = antithetic_gradient(model, x_adv[idx], y[idx], samples=self.samples,
                                       sigma=self.sigma, max_batch=self.max_batch, index=idx)
            x_new = self.project(x[idx], x_adv[idx] + self.step_size
                                 * step_direction(grad, self.norm))
            with subset_queries(model, idx), torch.no_grad():
                logits = model(x_new)
            x_adv[idx] = x_new
            loss[idx] = margin(logits, y[idx])
            active[idx] = logits.argmax(1) == y[idx]
            self.record_loss(loss)
        return x_adv
