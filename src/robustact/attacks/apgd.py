"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690): PGD with momentum and a step size that halves
at fixed checkpoints when progress stalls. L-inf and L2, CE or DLR loss."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import (
    Attack,
    check_count,
    check_flag,
    perturbation_norm,
    subset_queries,
)
from robustact.attacks.losses import get_loss, get_targeted_loss
from robustact.attacks.pgd import step_direction
from robustact.errors import ConfigError

APGD_LOSSES = ("ce", "dlr", "margin")


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps), j >= 1, at which APGD checks its step size.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1
    (the paper's formula). For steps=100 this gives 22, 41, 57, 70, 80, 87, 93, 99, the same as
    the reference code; for other step counts the reference rounds the interval lengths
    (int(0.22 N), then minus max(int(0.03 N), 1) down to max(int(0.06 N), 1)) and can differ.
    Duplicates (few steps) are dropped.
    """
    if steps < 1:
        raise ConfigError(f"apgd: steps must be >= 1, got {steps}")
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1 + 1e-12:
            break
        p.append(nxt)
    # the rounding guard keeps 0.41 * 100 = 41.000000000000004 from becoming 42
    points = {math.ceil(pj * steps - 1e-9) for pj in p[1:]}
    return sorted(w for w in points if 1 <= w <= steps)


class APGD(Attack):
    """Auto-PGD with momentum, random start and restarts.

    Per restart: x^(0) is a random point on the eps-sphere (clipped to [0, 1]); the step size starts
    at 2 eps; each iteration takes z = P(x^(k) + eta * dir(grad)) and
    x^(k+1) = P(x^(k) + alpha (z - x^(k)) + (1 - alpha)(x^(k) - x^(k-1))) (alpha = 1 for the first
    step). At each checkpoint w_j (:func:`apgd_checkpoints`) an example halves its step and restarts
    from its highest-loss point if (1) its loss rose in fewer than ``rho`` of the iterations since
    w_{j-1}, or (2) its step was not halved at w_{j-1} and its best loss has not risen since.

    Differences from the reference code (autopgd_base.py), all following the paper: condition 1
    is a strict "<" (the reference uses "<="), condition 2 can already fire at w_1, and the first
    comparison after a restart from the best point uses that point's loss.

    Returns for each example a misclassified point if one was found (the last one), else its
    highest-loss point. Restarts after the first run only on examples not yet fooled; examples
    misclassified before the attack are returned unchanged.

    Targeted (``targeted=True``, AutoAttack's APGD-T): for each of the ``n_target_classes``
    highest-scoring wrong classes of the clean input in turn, on the examples not yet
    misclassified, the loss is the targeted version of ``loss`` (targeted DLR
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, minus the cross-entropy of the target,
    or z_t - z_y); success is still any misclassification.

    Args:
        eps: radius on the [0, 1] scale.
        norm: "linf" or "l2".
        steps: iterations per restart (gradients: steps + 1 per restart).
        restarts: independent random starts.
        loss: "ce", "dlr" (needs >= 3 classes; 4 when targeted) or "margin".
        targeted: aim at the top-scoring wrong classes in turn (see above).
        n_target_classes: how many target classes a targeted run tries (AutoAttack: 9).
        rho: fraction of loss increases below which the step size is halved (paper: 0.75).
        momentum: alpha, weight of the new step versus the previous move (paper: 0.75).
    """

    name = "apgd"

    def __init__(
        self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
        loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, targeted: bool = False,
        n_target_classes: int = 9, batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        if steps < 1 or restarts < 1:
            raise ConfigError(f"{self.name}: steps and restarts must be >= 1, got steps={steps}, "
                              f"restarts={restarts}")
        if loss not in APGD_LOSSES:
            raise ConfigError(f"{self.name}: loss must be one of {', '.join(APGD_LOSSES)}, "
                              f"got {loss!r}")
        if not 0 < rho <= 1:
            raise ConfigError(f"{self.name}: rho must be in (0, 1], got {rho}")
        if not 0 <= momentum <= 1:
            raise ConfigError(f"{self.name}: momentum must be in [0, 1], got {momentum}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.loss = loss
        self.loss_fn = get_loss(loss)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.targeted = check_flag(self.name, "targeted", targeted)
        self.n_target_classes = check_count(self.name, "n_target_classes", n_target_classes)
        self.targeted_loss_fn = get_targeted_loss(loss) if self.targeted else None

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "steps": self.steps, "restarts": self.restarts,
                "loss": self.loss, "rho": self.rho, "momentum": self.momentum,
                "initial_step": 2 * self.eps, "checkpoints": apgd_checkpoints(self.steps),
                **self.targeting()}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.targets_or_restarts(model, x, y, self._restarts)

    def _restarts(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All restarts on examples x: (returned points, misclassified)."""
        with torch.no_grad():
            fooled = model(x).argmax(1) != y
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
        for restart in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            with subset_queries(model, idx):
                adv, adv_fooled, adv_loss = self._single_run(
                    model, x[idx], y[idx], None if target is None else target[idx],
                    trace=restart == 0)
            take = adv_fooled | (adv_loss > best_loss[idx])
            best[idx[take]] = adv[take]
            best_loss[idx[take]] = adv_loss[take]
            fooled[idx[adv_fooled]] = True
        return best, fooled

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        """A random point on the eps-sphere: uniform noise scaled to L-inf norm eps, or a
        Gaussian direction scaled to L2 norm eps (as the reference), clipped to [0, 1]."""
        t = 2 * torch.rand_like(x) - 1 if self.norm == "linf" else torch.randn_like(x)
        shape = (-1, *([1] * (x.dim() - 1)))
        scale = perturbation_norm(t, self.norm)
        return self.project(x, x + self.eps * t / (scale.view(shape) + 1e-12))

    def _single_run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
        *, trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One restart on examples x (toward ``target`` if given): (returned point, fooled,
        best loss).

        At each checkpoint the examples already misclassified retire with their point, and the
        remaining iterations run on the others only (a batch that is all fooled stops): the
        result is the same, the cost shrinks with the robust points."""
        shape = (-1, *([1] * (x.dim() - 1)))
        n = x.shape[0]
        out_x, out_loss = x.clone(), torch.full((n,), -math.inf, device=x.device)
        out_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        pos = torch.arange(n, device=x.device)  # the rows still iterated, as positions in x
        loss_fn = self._loss_for(target)
        x_adv = self.random_start(x)
        loss, grad, logits = self.input_gradient(model, x_adv, y, loss_fn)
        last_loss = loss.clone()  # per example, frozen once it retires (for the loss trace)
        fooled = logits.argmax(1) != y
        x_fooled = x_adv.clone()
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        eta = torch.full((n,), 2 * self.eps, device=x.device)
        x_prev = x_adv
        loss_prev = loss.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        last_check = 0
        increases = torch.zeros(n, device=x.device)
        loss_best_at_check = loss_best.clone()
        halved_at_check = torch.zeros(n, dtype=torch.bool, device=x.device)
        for k in range(self.steps):
            alpha = 1.0 if k == 0 else self.momentum
            with torch.no_grad():
                z = self.project(x, x_adv + eta.view(shape) * step_direction(grad, self.norm))
                x_next = self.project(
                    x, x_adv + alpha * (z - x_adv) + (1 - alpha) * (x_adv - x_prev))
            x_prev, x_adv = x_adv, x_next
            with subset_queries(model, pos):
                loss, grad, logits = self.input_gradient(model, x_adv, y, loss_fn,
                                                         count=~fooled)
            if trace:
                last_loss[pos] = loss
                self.record_loss(last_loss)
            now_fooled = logits.argmax(1) != y
            x_fooled[now_fooled] = x_adv[now_fooled]
            fooled |= now_fooled
            increases += (loss > loss_prev).float()
            loss_prev = loss.clone()
            improved = loss > loss_best
            x_best[improved] = x_adv[improved]
            loss_best[improved] = loss[improved]
            grad_best[improved] = grad[improved]
            if k + 1 in checkpoints:
                span = k + 1 - last_check
                stalled = increases < self.rho * span
                no_progress = ~halved_at_check & (loss_best <= loss_best_at_check)
                halve = stalled | no_progress
                eta[halve] /= 2
                x_adv[halve] = x_best[halve]
                grad[halve] = grad_best[halve]
                loss_prev[halve] = loss_best[halve]
                halved_at_check = halve
                loss_best_at_check = loss_best.clone()
                increases.zero_()
                last_check = k + 1
                if k + 1 < self.steps and bool(fooled.any()):  # one host sync per checkpoint
                    done = fooled.nonzero().squeeze(1)
                    out_x[pos[done]] = x_fooled[done]
                    out_loss[pos[done]] = loss_best[done]
                    out_fooled[pos[done]] = True
                    keep = (~fooled).nonzero().squeeze(1)
                    if keep.numel() == 0:
                        return out_x, out_fooled, out_loss
                    pos, x, y = pos[keep], x[keep], y[keep]
                    target = None if target is None else target[keep]
                    loss_fn = self._loss_for(target)
                    (x_adv, x_prev, x_fooled, x_best, grad, grad_best, loss_best, loss_prev,
                     eta, increases, loss_best_at_check, halved_at_check, fooled) = (
                        t[keep] for t in (x_adv, x_prev, x_fooled, x_best, grad, grad_best,
                                          loss_best, loss_prev, eta, increases,
                                          loss_best_at_check, halved_at_check, fooled))
        out_x[pos] = torch.where(fooled.view(shape), x_fooled, x_best)
        out_loss[pos] = loss_best
        out_fooled[pos] = fooled
        return out_x, out_fooled, out_loss

    def _loss_for(self, target: torch.Tensor | None) -> Any:
        """The per-example loss, toward ``target`` (aligned with the batch) if given."""
        if target is None:
            return self.loss_fn
        return lambda logits, labels: self.targeted_loss_fn(logits, labels, target)


class APGDCE(APGD):
    """APGD on the cross-entropy loss (AutoAttack's first attack)."""

    name = "apgd_ce"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, momentum: float = 0.75, batch_size: int = 256,
                 seed: int | None = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts, loss="ce", rho=rho,
                         momentum=momentum, batch_size=batch_size, seed=seed)


class APGDDLR(APGD):
    """APGD on the (untargeted) Difference of Logits Ratio loss; needs >= 3 classes."""

    name = "apgd_dlr"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, momentum: float = 0.75, batch_size: int = 256,
                 seed: int | None = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts, loss="dlr", rho=rho,
                         momentum=momentum, batch_size=batch_size, seed=seed)


class APGDT(APGD):
    """APGD-T (AutoAttack's second attack): APGD on the targeted DLR loss toward each of the
    ``n_target_classes`` highest-scoring wrong classes in turn (needs >= 4 classes)."""

    name = "apgd_t"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 n_target_classes: int = 9, loss: str = "dlr", rho: float = 0.75,
                 momentum: float = 0.75, batch_size: int = 256, seed: int | None = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss, rho=rho,
                         momentum=momentum, targeted=True, n_target_classes=n_target_classes,
                         batch_size=batch_size, seed=seed)
