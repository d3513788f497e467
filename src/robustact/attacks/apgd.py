"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690): PGD with momentum and a step size that halves
at fixed checkpoints when progress stalls. L-inf and L2, CE or DLR loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, check_in, perturbation_norm, subset_queries
from robustact.attacks.losses import get_loss, get_targeted_loss
from robustact.attacks.pgd import step_direction
from robustact.attacks.registry import ATTACKS
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


@dataclass
class _Run:
    """One APGD restart in progress. ``out_*`` and ``last_loss`` have one row per example of the
    restart; the other tensors one row per example still iterated, ``pos`` its position."""

    out_x: torch.Tensor
    out_loss: torch.Tensor
    out_fooled: torch.Tensor
    last_loss: torch.Tensor  # per example, frozen once it retires (for the loss trace)
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    pos: torch.Tensor
    loss_fn: Any
    x_adv: torch.Tensor
    x_prev: torch.Tensor
    x_fooled: torch.Tensor
    x_best: torch.Tensor
    grad: torch.Tensor
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    loss_prev: torch.Tensor
    loss_best_at_check: torch.Tensor
    eta: torch.Tensor
    increases: torch.Tensor
    halved_at_check: torch.Tensor
    fooled: torch.Tensor

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with the iterated examples at ``rows`` only."""
        for name in _ROW_FIELDS:
            setattr(self, name, getattr(self, name)[rows])
        if self.target is not None:
            self.target = self.target[rows]

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(returned point, fooled, best loss) per example: the last misclassified point of an
        example fooled, else its highest-loss point."""
        shape = (-1, *([1] * (self.x.dim() - 1)))
        self.out_x[self.pos] = torch.where(self.fooled.view(shape), self.x_fooled, self.x_best)
        self.out_loss[self.pos] = self.loss_best
        self.out_fooled[self.pos] = self.fooled
        return self.out_x, self.out_fooled, self.out_loss


_ROW_FIELDS = ("pos", "x", "y", "x_adv", "x_prev", "x_fooled", "x_best", "grad", "grad_best",
               "loss_best", "loss_prev", "eta", "increases", "loss_best_at_check",
               "halved_at_check", "fooled")


@ATTACKS.register()
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
        self.rho = check_in(self.name, "rho", rho, "(0, 1]")
        self.momentum = check_in(self.name, "momentum", momentum, "[0, 1]")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.loss = loss
        self.loss_fn = get_loss(loss)
        self.set_targeting(targeted, n_target_classes)
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

        After each iteration the examples it misclassified retire with their point, and the
        remaining iterations run on the others only (a batch that is all fooled stops): a
        deterministic model's outcome is the same, the cost shrinks to the iterations each
        example needs. (One host sync per iteration, as the step's boolean bookkeeping already
        costs; under EOT an iteration is many passes, and an example retired by an unlucky
        average is attacked again by the suite's next attack, which runs on the points the
        judging still finds robust.)"""
        run = self._start(model, x, y, target)
        checkpoints = set(apgd_checkpoints(self.steps))
        last_check = 0
        for k in range(self.steps):
            self._step(model, run, 1.0 if k == 0 else self.momentum, trace=trace)
            if k + 1 in checkpoints:
                self._halve_stalled(run, span=k + 1 - last_check)
                last_check = k + 1
            retire = k + 1 < self.steps and bool(run.fooled.any())
            if retire and not self._retire_fooled(run):  # every example is fooled
                return run.out_x, run.out_fooled, run.out_loss
        return run.finish()

    def _start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               target: torch.Tensor | None) -> _Run:
        """The state of a restart before its first iteration: a random start and its gradient."""
        n = x.shape[0]
        out_x, out_loss = x.clone(), torch.full((n,), -math.inf, device=x.device)
        out_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        pos = torch.arange(n, device=x.device)
        loss_fn = self._loss_for(target)
        x_adv = self.random_start(x)
        loss, grad, logits = self.input_gradient(model, x_adv, y, loss_fn)
        return _Run(
            out_x=out_x, out_loss=out_loss, out_fooled=out_fooled, last_loss=loss.clone(),
            x=x, y=y, target=target, pos=pos, loss_fn=loss_fn,
            x_adv=x_adv, x_prev=x_adv, x_fooled=x_adv.clone(), x_best=x_adv.clone(),
            grad=grad, grad_best=grad.clone(), loss_best=loss.clone(), loss_prev=loss.clone(),
            loss_best_at_check=loss.clone(), eta=torch.full((n,), 2 * self.eps, device=x.device),
            increases=torch.zeros(n, device=x.device),
            halved_at_check=torch.zeros(n, dtype=torch.bool, device=x.device),
            fooled=logits.argmax(1) != y,
        )

    def _step(self, model: nn.Module, run: _Run, alpha: float, *, trace: bool) -> None:
        """One iteration: the momentum step (weight ``alpha`` on the new step), the gradient at
        the new point, and the fooled, best and loss-increase bookkeeping."""
        shape = (-1, *([1] * (run.x.dim() - 1)))
        with torch.no_grad():
            z = self.project(run.x, run.x_adv + run.eta.view(shape)
                             * step_direction(run.grad, self.norm))
            x_next = self.project(run.x, run.x_adv + alpha * (z - run.x_adv)
                                  + (1 - alpha) * (run.x_adv - run.x_prev))
        run.x_prev, run.x_adv = run.x_adv, x_next
        with subset_queries(model, run.pos):
            loss, run.grad, logits = self.input_gradient(model, run.x_adv, run.y, run.loss_fn,
                                                         count=~run.fooled)
        if trace:
            run.last_loss[run.pos] = loss
            self.record_loss(run.last_loss)
        now_fooled = logits.argmax(1) != run.y
        run.x_fooled[now_fooled] = run.x_adv[now_fooled]
        run.fooled |= now_fooled
        run.increases += (loss > run.loss_prev).float()
        run.loss_prev = loss.clone()
        improved = loss > run.loss_best
        run.x_best[improved] = run.x_adv[improved]
        run.loss_best[improved] = loss[improved]
        run.grad_best[improved] = run.grad[improved]

    def _halve_stalled(self, run: _Run, *, span: int) -> None:
        """At a checkpoint ``span`` iterations after the last: an example whose loss rose in
        fewer than rho of them, or whose best loss did not rise since a checkpoint where its
        step was kept, halves its step and goes back to its best point."""
        stalled = run.increases < self.rho * span
        no_progress = ~run.halved_at_check & (run.loss_best <= run.loss_best_at_check)
        halve = stalled | no_progress
        run.eta[halve] /= 2
        run.x_adv[halve] = run.x_best[halve]
        run.grad[halve] = run.grad_best[halve]
        run.loss_prev[halve] = run.loss_best[halve]
        run.halved_at_check = halve
        run.loss_best_at_check = run.loss_best.clone()
        run.increases.zero_()

    def _retire_fooled(self, run: _Run) -> bool:
        """Write out the examples fooled so far and keep iterating the others only; False when
        none is left."""
        done = run.fooled.nonzero().squeeze(1)
        run.out_x[run.pos[done]] = run.x_fooled[done]
        run.out_loss[run.pos[done]] = run.loss_best[done]
        run.out_fooled[run.pos[done]] = True
        keep = (~run.fooled).nonzero().squeeze(1)
        if keep.numel() == 0:
            return False
        run.keep(keep)
        run.loss_fn = self._loss_for(run.target)
        return True

    def _loss_for(self, target: torch.Tensor | None) -> Any:
        """The per-example loss, toward ``target`` (aligned with the batch) if given."""
        if target is None:
            return self.loss_fn
        return lambda logits, labels: self.targeted_loss_fn(logits, labels, target)


class _FixedLossAPGD(APGD):
    """APGD whose loss is set by the class (``fixed_loss``), so ``loss`` is no option."""

    fixed_loss = "ce"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, momentum: float = 0.75, batch_size: int = 256,
                 seed: int | None = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts,
                         loss=self.fixed_loss, rho=rho, momentum=momentum,
                         batch_size=batch_size, seed=seed)


@ATTACKS.register()
class APGDCE(_FixedLossAPGD):
    """APGD on the cross-entropy loss (AutoAttack's first attack)."""

    name = "apgd_ce"
    fixed_loss = "ce"


@ATTACKS.register()
class APGDDLR(_FixedLossAPGD):
    """APGD on the (untargeted) Difference of Logits Ratio loss; needs >= 3 classes."""

    name = "apgd_dlr"
    fixed_loss = "dlr"


@ATTACKS.register()
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
