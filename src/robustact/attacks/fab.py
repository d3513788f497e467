"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack"), L-inf, L2 and L1, batched.

FAB is a minimum-norm attack. Each iteration linearises the decision boundary between the label
and one other class at the current iterate x^(i) (untargeted: the class whose linearised
boundary is closest; targeted, FAB-T: a fixed target class), projects both x^(i) and the clean
input x onto the intersection of that hyperplane with the box [0, 1]^d, and moves to a convex
combination of the two projections, biased towards the one from x (which keeps the perturbation
small)::

    d1 = proj(x^(i)) - x^(i),  d2 = proj(x) - x
    alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)
    x^(i+1) = clip((1 - alpha) (x^(i) + eta d1) + alpha (x + eta d2), 0, 1)

When x^(i+1) is misclassified it is remembered if it is the closest adversarial so far, and the
iterate steps back towards x: x^(i+1) <- x + beta (x^(i+1) - x).

robustact reports FAB as robust accuracy at ``eps``, as AutoAttack uses it: a run's adversarial
counts only if its norm is at most eps; restarts and target ranks run only on the points not yet
fooled within eps, and the others are returned as the clean input. For minimal norms, run it
with an eps no perturbation reaches and read ``result.norms`` where ``result.success``.

Facts of the reference code (AutoAttack's fab_base.py / fab_projections.py; torchattacks 3.5
copies it), for comparing numbers: the same iteration, the same defaults, random restarts
from a point at norm eps / 2 (uniform noise for L-inf, a Gaussian direction for L2 and L1),
FAB-T targets for rank r the (r + 1)-th highest clean logit. Differences: the hyperplane-box
projection here solves the same problem by sorting and counting (the reference bisects over
the sorted breakpoints; where the box cannot reach the hyperplane both step to the box corner
nearest it); the reference forwards each run's result once more to judge it (here the
iteration's own forward judges it, and the base class judges the returned points again).
Untargeted FAB takes one backward per class per iteration, as the reference. torchattacks 3.5's
``FAB``
fails with norm "L1" in ``perturb`` (its eps check has no L1 branch), although its single run
supports it.

Caution: like DeepFool, FAB trusts the local gradient and fails silently on gradient-masking
defenses; pair it with gradient-free attacks (square) for evidence of robustness.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import (
    ALL_NORMS,
    Attack,
    check_count,
    check_in,
    perturbation_norm,
    subset_queries,
)
from robustact.attacks.losses import targeted_margin
from robustact.attacks.registry import ATTACKS
from robustact.errors import ConfigError

#: lower bound on the projection sizes in the step-size ratio (the reference's 1e-8)
_MIN_SIZE = 1e-8
#: added to dual norms before dividing (a flat gradient gives an infinite distance)
_TINY = 1e-12


@ATTACKS.register()
class FAB(Attack):
    """FAB (untargeted) or FAB-T (``targeted=True``), judged at ``eps``.

    Args:
        eps: radius on the [0, 1] scale at which a run's result counts (its norm must be <= eps),
            also the scale of random restarts (started at norm eps / 2 around x, clipped to
            [0, 1]). Use a large eps for the unbounded attack (minimal norms in result.norms).
        norm: "linf", "l2" or "l1"; the linearised distance uses the dual norm of the gradient.
        steps: iterations per run (each: one forward with one backward per class, or one
            backward for FAB-T, and one forward to check the new iterate).
        restarts: runs per target; the first starts at x, the others at random points.
        alpha_max: largest weight of the projection from x in the step, in [0, 1].
        eta: overshoot of each projection step (>= 1).
        beta: backward step towards x after an adversarial iterate, in (0, 1).
        targeted: FAB-T: for rank r = 1 .. n_target_classes, the target is the r-th highest
            scoring wrong class at the clean input, and each rank runs only on the points not
            yet fooled within eps (AutoAttack's fab-t, :meth:`Attack.over_targets`). Untargeted
            FAB needs the gradient of every class at every step (memory: batch x classes x
            input size).
        n_target_classes: ranks tried by FAB-T (capped at classes - 1).

    Queries per example: 1 clean forward (FAB-T: 1 more per rank it takes part in), 2 per
    iteration of each run it takes part in, and the base's final judgement. The loss trace is
    minus the mean linearised distance to the chosen boundary at each iterate of the first run
    (it rises towards 0 as the iterates approach it).
    """

    name = "fab"
    #: eps bounds the result: a run's adversarial beyond eps is never returned (the base's
    #: projection leaves the returned points unchanged)
    bounded = True
    norms = ALL_NORMS

    def __init__(
        self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, targeted: bool = False,
        n_target_classes: int = 9, batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        self.steps = check_count(self.name, "steps", steps)
        self.restarts = check_count(self.name, "restarts", restarts)
        self.set_targeting(targeted, n_target_classes)
        self.alpha_max = check_in(self.name, "alpha_max", alpha_max, "[0, 1]")
        if not (math.isfinite(eta) and eta >= 1):
            raise ConfigError(f"{self.name}: eta (overshoot) must be >= 1, got {eta}")
        self.eta = float(eta)
        self.beta = check_in(self.name, "beta", beta, "(0, 1)")

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "steps": self.steps, "restarts": self.restarts,
                "alpha_max": self.alpha_max, "eta": self.eta, "beta": self.beta,
                **self.targeting()}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.targets_or_restarts(model, x, y, self._restarts)

    def _restarts(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All restarts on examples x (toward ``target`` if given): (an adversarial within eps,
        else x; misclassified within eps). Each restart runs on the examples not yet fooled."""
        with torch.no_grad():
            logits = model(x)
        if logits.shape[1] < 2:
            raise ConfigError(f"{self.name}: the model must output at least 2 classes, got "
                              f"{logits.shape[1]}")
        fooled = logits.argmax(1) != y  # clean errors are returned unchanged
        out = x.clone()
        for restart in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            start = x[idx] if restart == 0 else self.random_start(x[idx])
            with subset_queries(model, idx):
                adv, norms = self._single_run(model, x[idx], y[idx],
                                              None if target is None else target[idx], start,
                                              trace=restart == 0)
            ok = norms <= self.eps
            out[idx[ok]] = adv[ok]
            fooled[idx[ok]] = True
        return out, fooled

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        """A random point at norm eps / 2 around x (L-inf: uniform noise; L2 and L1: a Gaussian
        direction, as the reference), clipped to [0, 1]. The reference's radius is
        min(best norm found in the run, eps) / 2, which is eps / 2 when a run starts."""
        t = 2 * torch.rand_like(x) - 1 if self.norm == "linf" else torch.randn_like(x)
        scale = perturbation_norm(t, self.norm).clamp_min(_TINY)
        return (x + 0.5 * self.eps * t / scale.view(-1, *([1] * (x.dim() - 1)))).clamp(0, 1)

    def _single_run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
        start: torch.Tensor, *, trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB run on examples x (b, ...) from ``start``: (the smallest adversarial found,
        x where none; its norm (b,), inf where none)."""
        shape = (-1, *([1] * (x.dim() - 1)))
        b = x.shape[0]
        x1 = start
        adv = x.clone()
        best = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
        for _ in range(self.steps):
            gap, normal, distance = self._boundary(model, x1, y, target)
            if trace:
                self.record_loss(-distance)
            delta = self._projections(x, x1, gap, normal)
            size = perturbation_norm(delta, self.norm).clamp_min(_MIN_SIZE)
            alpha = (size[:b] / (size[:b] + size[b:])).clamp(0.0, self.alpha_max).view(shape)
            x1 = ((1 - alpha) * (x1 + self.eta * delta[:b])
                  + alpha * (x + self.eta * delta[b:])).clamp(0.0, 1.0)
            with torch.no_grad():
                is_adv = model(x1).argmax(1) != y
            norms = perturbation_norm(x1 - x, self.norm)
            better = is_adv & (norms < best)
            adv = torch.where(better.view(shape), x1, adv)
            best = torch.where(better, norms, best)
            x1 = torch.where(is_adv.view(shape), x + self.beta * (x1 - x), x1)
        return adv, best

    def _boundary(
        self, model: nn.Module, x1: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The linearised boundary used at x1: the logit gap f_k - f_y (b,) at x1, its gradient
        (b, ...) and the linearised distance |gap| / ||grad||_dual (b,), for k the target or,
        untargeted, the class with the smallest such distance."""
        if target is not None:
            gap, grad, _ = self.input_gradient(
                model, x1, y, lambda logits, labels: targeted_margin(logits, labels, target))
            return gap, grad, gap.abs() / (self._dual_norm(grad.flatten(1)) + _TINY)
        gaps, grads = self._all_gaps(model, x1, y)  # (b, K), (b, K, ...)
        distances = gaps.abs() / (self._dual_norm(grads.flatten(2)) + _TINY)
        distances = distances.scatter(1, y[:, None], math.inf)
        closest = distances.argmin(1)
        rows = torch.arange(x1.shape[0], device=x1.device)
        return gaps[rows, closest], grads[rows, closest], distances[rows, closest]

    def _all_gaps(self, model: nn.Module, x1: torch.Tensor,
                  y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit gaps f_k - f_y (b, K) at x1 and their gradients (b, K, ...): one forward and one
        backward per class (examples do not interact in eval mode)."""
        xs = x1.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xs)
            classes = logits.shape[1]
            grads = []
            for k in range(classes):
                (grad,) = torch.autograd.grad(logits[:, k].sum(), xs,
                                              retain_graph=k + 1 < classes)
                grads.append(self.record_gradient(grad))
        jacobian = torch.stack(grads, 1)
        logits = logits.detach()
        rows = torch.arange(x1.shape[0], device=x1.device)
        gaps = logits - logits.gather(1, y[:, None])
        return gaps, jacobian - jacobian[rows, y].unsqueeze(1)

    def _dual_norm(self, grad: torch.Tensor) -> torch.Tensor:
        """Dual norm over the last dim: L1 for L-inf, L2 for L2, L-inf for L1."""
        if self.norm == "linf":
            return grad.abs().sum(-1)
        return grad.norm(dim=-1) if self.norm == "l2" else grad.abs().amax(-1)

    def _projections(self, x: torch.Tensor, x1: torch.Tensor, gap: torch.Tensor,
                     normal: torch.Tensor) -> torch.Tensor:
        """The steps (2b, ...) from x1 and from x onto the linearised boundary within [0, 1]:
        rows :b from x1, b: from x. The linear function is gap + <normal, z - x1>."""
        b = x.shape[0]
        w = normal.flatten(1)
        offset_x = gap + (w * (x - x1).flatten(1)).sum(1)
        points = torch.cat((x1.flatten(1), x.flatten(1)))
        steps = hyperplane_box_step(points, torch.cat((w, w)), torch.cat((gap, offset_x)),
                                    self.norm)
        return steps.view(2 * b, *x.shape[1:])


def hyperplane_box_step(points: torch.Tensor, w: torch.Tensor, offset: torch.Tensor,
                        norm: str) -> torch.Tensor:
    """The smallest step (B, d), in ``norm``, from each point onto its hyperplane within the box.

    Row i solves min ||delta|| s.t. <w_i, delta> + offset_i = 0 and points_i + delta in [0, 1]^d,
    where ``offset`` (B,) is the linear function h(z) = <w, z> - b at the point (so the
    hyperplane is h = 0). Each coordinate moves only in the direction that brings h towards 0,
    by m_i in [0, room_i] (room: the distance to the box face that way); the optimum, by norm:

    - linf: m_i = min(lam, room_i), lam the smallest with sum |w_i| m_i = |offset|;
    - l2: m_i = min(lam |w_i|, room_i) (the Euclidean projection, box active where clipped);
    - l1: the coordinates with the largest |w_i| move fully, one partly (a fractional knapsack).

    Found by sorting the coordinates and counting the breakpoints before |offset|, with no host
    sync. Where the box cannot reach the hyperplane the step goes to the box corner nearest it.
    points: (B, d) in [0, 1]; w: (B, d).
    """
    direction = -torch.sign(offset)[:, None] * torch.sign(w)  # 0 where w_i = 0 or on the plane
    weight = w.abs()
    room = torch.where(direction > 0, 1 - points, points).clamp_min(0)
    need = offset.abs()[:, None]
    if norm == "l1":
        return direction * _fill_l1(weight, room, need)
    if norm == "linf":
        keys, slope = room, weight  # m_i = min(lam, room_i)
    elif norm == "l2":
        keys = torch.where(weight > 0, room / weight, 0.0).clamp_max(torch.finfo(w.dtype).max)
        slope = weight * weight  # m_i = min(lam |w_i|, room_i): clipped from lam = keys_i on
    else:
        raise ConfigError(f"fab: norm must be linf, l2 or l1, got {norm!r}")
    order = keys.argsort(1)
    lam, reachable = _level(keys.gather(1, order), (weight * room).gather(1, order),
                            slope.gather(1, order), need)
    moved = torch.minimum(lam if norm == "linf" else lam * weight, room)
    return direction * torch.where(reachable, moved, room)


def _level(keys: torch.Tensor, full: torch.Tensor, slope: torch.Tensor,
           need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1) the lam at which progress(lam) = sum_{keys_j <= lam} full_j
    + lam sum_{keys_j > lam} slope_j reaches ``need``, and (B, 1) bool whether it ever does.

    keys (B, d) ascending; full, slope (B, d) in that order, non-negative."""
    done_before = full.cumsum(1)  # progress of the coordinates at or below each breakpoint
    slope_after = slope.flip(1).cumsum(1).flip(1)  # slope of the coordinates at or above
    progress = done_before + keys * (slope_after - slope)
    first = (progress < need).sum(1, keepdim=True)  # the first breakpoint reaching need
    reachable = first < keys.shape[1]
    first = first.clamp_max(keys.shape[1] - 1)
    before = (done_before - full).gather(1, first)
    lam = (need - before) / slope_after.gather(1, first).clamp_min(torch.finfo(keys.dtype).tiny)
    return lam.clamp_min(0), reachable


def _fill_l1(weight: torch.Tensor, room: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """(B, d) moves m_i in [0, room_i] with sum weight_i m_i = need and the least sum m_i:
    the coordinates in order of decreasing weight fill up until ``need`` is met (all fill where
    it cannot be met)."""
    order = weight.argsort(1, descending=True)
    w_s, room_s = weight.gather(1, order), room.gather(1, order)
    capacity = (w_s * room_s).cumsum(1)
    first = (capacity < need).sum(1, keepdim=True)  # the coordinate that moves partly
    rank = torch.arange(weight.shape[1], device=weight.device)[None]
    last = first.clamp_max(weight.shape[1] - 1)
    before = (capacity - w_s * room_s).gather(1, last)
    part = ((need - before) / w_s.gather(1, last).clamp_min(torch.finfo(weight.dtype).tiny))
    part = torch.minimum(part.clamp_min(0), room_s.gather(1, last))
    moves = torch.where(rank < first, room_s, torch.where(rank == first, part, 0.0))
    return torch.zeros_like(moves).scatter(1, order, moves)

