"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016), L2 and L-inf, batched.

DeepFool is a minimum-norm attack: it linearises the model around the current point, steps to
the nearest linearised decision boundary among a few candidate classes and repeats until the
prediction changes. robustact still reports it as robust accuracy at ``eps`` (as the seed tables
do): the base class projects the minimal adversarial onto the eps-ball, so an example counts as
broken only if DeepFool found an adversarial within ``eps``. The unprojected minimal norms of
the last call are kept in :attr:`DeepFool.last_min_norms` for accuracy at any other eps.

Differences from other implementations (facts, for comparing numbers):

- foolbox 3 (``L2DeepFoolAttack`` / ``LinfDeepFoolAttack``), whose formulation this follows:
  logit differences ``z_k - z_0`` for the top-``candidates`` classes ranked at the clean point,
  distance ``|z_k - z_0| / ||grad||`` (dual norm: L2 for L2, L1 for L-inf), ``1e-4`` added to the
  chosen distance, steps accumulated in ``p_total`` and the overshoot applied to the total
  (``x0 + (1 + overshoot) * p_total``, clipped to the bounds). foolbox ranks against the
  *predicted* class and spends one forward per candidate per step; here the reference class is
  the label (the same for correctly classified points; misclassified ones stop at once) and one
  forward plus one backward per candidate serves all active examples of the batch.
- torchattacks 3.5 ``DeepFool``: L2 only, always all classes, one example at a time with a full
  Jacobian, and the overshoot scales each step on the current image rather than the total,
  clipping to [0, 1] after each step. The last step is tiny, so its adversarials sit within float
  noise of the boundary (a logit gap of ~1e-6 seen on a Fashion-MNIST CNN): re-evaluated in a
  batch, many are classified as the label again. Its minimal norms agree with these within 1%.

Caution: minimum-norm attacks trust the local gradient. On gradient-masking defenses such as
k-WTA they collapse and report far too much robustness (AttackBench, Cina et al. 2025); never use
DeepFool alone as evidence of robustness.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, AttackResult, perturbation_norm, subset_queries
from robustact.attacks.registry import ATTACKS
from robustact.errors import ConfigError

#: added to the chosen distance so each step lands just past the linearised boundary (foolbox)
_DISTANCE_SLACK = 1e-4
_TINY = 1e-8


@ATTACKS.register()
class DeepFool(Attack):
    """DeepFool, stopped per example as soon as the prediction leaves the label.

    Args:
        eps: radius (on the [0, 1] scale) at which the result is judged: the minimal adversarial
            is projected onto the eps-ball by the base class, so robust accuracy is "no
            adversarial found within eps". Use a large eps (with ``last_min_norms``) for the
            unbounded attack.
        norm: "l2" or "linf"; the linearised distance uses the dual norm of the gradient.
        steps: maximum iterations (foolbox's default 50; the k-WTA reproduction used 20).
        candidates: classes considered: the label and the ``candidates - 1`` other classes with
            the highest clean logits (None = all classes). Must be >= 2.
        overshoot: the accumulated perturbation is scaled by ``1 + overshoot``.

    Attributes:
        last_min_norms: after a call, (N,) norm ||x_adv - x|| (in ``norm``) of the minimal
            adversarial found for each example before projection, 0 for clean errors, ``inf``
            where none was found within ``steps``. Robust accuracy at any radius r is
            ``(last_min_norms > r).float().mean()``; for r <= eps this equals the base's
            success judgement except in the rare case where the projection of a non-adversarial
            last iterate happens to be adversarial (the base's mask then counts it broken).

    Queries per example: 1 per iteration it takes part in (the first also ranks the candidates),
    1 for checking the last iterate when ``steps`` run out, and the base's final judgement.
    The loss trace is minus the mean, over the batch, of the smallest linearised distance to a
    candidate boundary (0 for examples already misclassified): like every attack's loss it
    should rise (here towards 0).
    """

    name = "deepfool"
    bounded = False

    def __init__(
        self, *, eps: float, norm: str = "linf", steps: int = 50, candidates: int | None = 10,
        overshoot: float = 0.02, batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        if steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {steps}")
        if candidates is not None and candidates < 2:
            raise ConfigError(f"{self.name}: candidates must be >= 2 (or None), got {candidates}")
        if not overshoot >= 0:
            raise ConfigError(f"{self.name}: overshoot must be >= 0, got {overshoot}")
        self.steps = int(steps)
        self.candidates = None if candidates is None else int(candidates)
        self.overshoot = float(overshoot)
        self.last_min_norms: torch.Tensor | None = None
        self._min_norms: list[torch.Tensor] = []

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "steps": self.steps,
                "candidates": self.candidates, "overshoot": self.overshoot}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        self._min_norms = []
        try:
            result = super().__call__(model, x, y)
        finally:
            norms, self._min_norms = self._min_norms, []
        self.last_min_norms = torch.cat(norms) if norms else torch.zeros(0)
        return result

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x_adv = x.clone()
        p_total = torch.zeros_like(x)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        distance = torch.zeros(n, device=x.device)  # linearised distance, for the loss trace
        classes: torch.Tensor | None = None  # (n, candidates - 1) other classes per example
        for _ in range(self.steps):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:  # all done: pad the trace so every batch records `steps`
                self.record_loss(-distance)
                continue
            xs = x_adv[idx].requires_grad_(True)
            with torch.enable_grad():
                logits = _forward(model, xs, idx, n)
            if classes is None:
                classes = _other_candidates(logits.detach(), y, self.candidates)
            fooled = logits.detach().argmax(1) != y[idx]
            found[idx[fooled]] = True
            distance[idx[fooled]] = 0.0
            live = ~fooled
            if live.any():
                p_step, dist = self._step(xs, logits, y[idx], classes[idx], live)
                go = idx[live]
                distance[go] = dist[live]
                p_total[go] += p_step[live]
                x_adv[go] = (x[go] + (1.0 + self.overshoot) * p_total[go]).clamp(0.0, 1.0)
            self.record_loss(-distance)
        idx = (~found).nonzero().squeeze(1)
        if idx.numel():  # the last update was never checked
            with torch.no_grad():
                fooled = _forward(model, x_adv[idx], idx, n).argmax(1) != y[idx]
            found[idx[fooled]] = True
        min_norms = perturbation_norm(x_adv - x, self.norm)
        self._min_norms.append(torch.where(found, min_norms, torch.full_like(min_norms,
                                                                            float("inf"))))
        return x_adv

    def _step(self, xs: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
              classes: torch.Tensor, live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbation (b, ...) to the nearest linearised candidate boundary and its size (b,).

        One backward per candidate of the batch-summed logit difference ``z_k - z_y`` gives
        every example its own gradient (examples do not interact in eval mode).
        """
        gaps = logits.gather(1, classes) - logits.gather(1, y[:, None])  # (b, c-1), <= 0
        weight = live.to(gaps.dtype)  # finished examples contribute nothing
        best_dist = torch.full_like(gaps[:, 0], float("inf")).detach()
        best_grad = torch.zeros_like(xs)
        for k in range(classes.shape[1]):
            (grad,) = torch.autograd.grad((gaps[:, k] * weight).sum(), xs,
                                          retain_graph=k + 1 < classes.shape[1])
            grad = self.record_gradient(grad, count=live)  # fooled rows get no gradient
            dual = grad.flatten(1).norm(p=2 if self.norm == "l2" else 1, dim=1)
            dist = gaps[:, k].detach().abs() / (dual + _TINY)
            better = dist < best_dist
            best_dist = torch.where(better, dist, best_dist)
            best_grad[better] = grad[better]
        shape = (-1, *([1] * (xs.dim() - 1)))
        size = (best_dist + _DISTANCE_SLACK).view(shape)
        if self.norm == "l2":
            l2 = best_grad.flatten(1).norm(dim=1).view(shape)
            return size * best_grad / (l2 + _TINY), best_dist
        return size * best_grad.sign(), best_dist


def _forward(model: nn.Module, xs: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Logits of the examples ``idx`` of the batch, counting queries for them only."""
    if idx.numel() == n:
        return model(xs)
    with subset_queries(model, idx):
        return model(xs)


def _other_candidates(logits: torch.Tensor, y: torch.Tensor, candidates: int | None
                      ) -> torch.Tensor:
    """(n, c - 1) the classes other than the label with the highest clean logits."""
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ConfigError(f"deepfool: the model must output at least 2 classes, got "
                          f"{num_classes}")
    c = num_classes if candidates is None else min(candidates, num_classes)
    others = logits.float().scatter(1, y[:, None], float("-inf"))
    return others.argsort(dim=1, descending=True)[:, :c - 1]
