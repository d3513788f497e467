"""Iterative gradient attacks: PGD (Madry et al.), BIM (Kurakin et al.), MI-FGSM (Dong et al.)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, subset_queries
from robustact.attacks.losses import LossFn, get_loss, get_targeted_loss
from robustact.attacks.registry import ATTACKS
from robustact.errors import ConfigError


def step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for L-inf, g / ||g||_2 for L2."""
    if norm == "linf":
        return grad.sign()
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform point of the L-inf ball, or a random direction at a uniform radius (L2)."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        delta = step_direction(torch.randn_like(x), "l2")
        delta = delta * eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
    return (x + delta).clamp(0.0, 1.0)


@ATTACKS.register()
class PGD(Attack):
    """Projected gradient ascent on a loss, with random start and restarts.

    Args:
        eps: radius on the [0, 1] scale (L-inf or L2).
        steps: iterations per restart.
        step_size: absolute step; default ``rel_step * eps`` if ``rel_step`` is given, else
            ``2.5 * eps / steps`` (Madry et al.).
        rel_step: step as a fraction of eps (foolbox's ``rel_stepsize``; the k-WTA
            reproduction used 0.003).
        random_start: start from a random point of the ball.
        restarts: independent runs; each example keeps its best (first a misclassified point,
            else the highest loss) among the points it was evaluated at: each iterate where the
            gradient was taken and, where nothing misclassified it yet, the last one.
        loss: "ce", "margin" (CW) or "dlr".
        targeted: aim at each of the ``n_target_classes`` highest-scoring wrong classes of the
            clean input in turn (AutoAttack's choice of targets), on the examples not yet
            misclassified, with the targeted version of ``loss`` (minus the target's
            cross-entropy, z_t - z_y, or the targeted DLR); success is any misclassification.
        n_target_classes: target classes a targeted run tries.

    Called to judge (``attack(model, x, y)`` on a model in eval mode), an example stops once a
    point misclassified it: every ``RETIRE_EVERY`` steps the fooled ones keep their point and
    the others go on alone, and a restart runs only on the examples no earlier one fooled. The
    outcome of a deterministic model is the same; the cost shrinks to what each example needs.
    Crafting training examples (:meth:`perturb`) runs every step on the whole batch, and with
    one restart returns the last iterate.
    """

    name = "pgd"
    #: examples stop once fooled when the attack judges (see :meth:`_retires`)
    retires = True
    #: steps between two retirements (a host sync each)
    RETIRE_EVERY = 4

    def __init__(
        self, *, eps: float, norm: str = "linf", steps: int = 40, step_size: float | None = None,
        rel_step: float | None = None, random_start: bool = True, restarts: int = 1,
        loss: str = "ce", targeted: bool = False, n_target_classes: int = 9,
        batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        if steps < 1 or restarts < 1:
            raise ConfigError(f"{self.name}: steps and restarts must be >= 1")
        self.set_targeting(targeted, n_target_classes)
        self.targeted_loss_fn = get_targeted_loss(loss) if self.targeted else None
        if step_size is not None and rel_step is not None:
            raise ConfigError(f"{self.name}: give step_size or rel_step, not both")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.random_start = bool(random_start)
        self.loss = loss
        self.loss_fn = get_loss(loss)
        for key, given in (("step_size", step_size), ("rel_step", rel_step)):
            if given is not None and not (math.isfinite(given) and given > 0):
                raise ConfigError(f"{self.name}: {key} must be a number > 0, got {given}")
        if step_size is None:
            step_size = rel_step * eps if rel_step is not None else 2.5 * eps / self.steps
        self.step_size = float(step_size)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "restarts": self.restarts, "loss": self.loss,
                **self.targeting()}

    def run(self, model: nn.Module, x: torch.Tensor,
            y: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.targeted:
            return self.over_targets(model, x, y, self.n_target_classes, self._toward)
        if not self._stats.judging and self.restarts == 1:
            return self._craft(model, x, y)
        best = self._restarts(model, x, y)
        return best.x, best.logits

    def _craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The last iterate, for :meth:`perturb` with one restart (Madry et al.'s training
        examples, and what torchattacks returns): no best point and no judging forward."""
        x_adv = random_start(x, self.eps, self.norm) if self.random_start else x.clone()
        box = None  # L-inf: the ball within [0, 1] is a box, and a signed step can be in place
        if self.norm == "linf" and type(self).direction is PGD.direction:
            box = (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)
        for _ in range(self.steps):
            _, grad, _ = self.input_gradient(model, x_adv, y, self.loss_fn)
            if box is None:
                x_adv = self.project(x, x_adv + self.step_size * self.direction(grad))
            else:  # grad is a fresh tensor and x_adv's graph is gone: no copies
                x_adv = x_adv.add_(grad.sign_(), alpha=self.step_size).clamp_(*box)
        return x_adv

    def _toward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best = self._restarts(model, x, y, target)
        return best.x, best.fooled

    def _loss_for(self, target: torch.Tensor | None, rows: torch.Tensor | None) -> LossFn:
        """The per-example loss of the examples at ``rows`` (None: all), toward their
        ``target`` if given."""
        if target is None:
            return self.loss_fn
        aimed = target if rows is None else target[rows]
        assert self.targeted_loss_fn is not None
        return lambda logits, labels: self.targeted_loss_fn(logits, labels, aimed)

    def _retires(self, model: nn.Module) -> bool:
        """Whether examples stop being iterated once fooled: when only success counts (the
        attack is judging, not crafting training examples) on a model in eval mode."""
        return self.retires and self._stats.judging and not model.training

    def _restarts(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None = None) -> _Best:
        best = _Best(x)
        retire = self._retires(model)
        for restart in range(self.restarts):
            # drawn for the whole batch, so the draws do not depend on who is still attacked
            start = random_start(x, self.eps, self.norm) if self.random_start else x.clone()
            rows = None
            if retire and restart > 0:  # one host sync per restart
                rows = (~best.fooled).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                start = start[rows]
            x_adv, rows = self._iterate(model, x, y, start, rows, best, target,
                                        retire=retire, trace=(restart == 0))
            self._judge_last(model, x_adv, rows, y, best, target)
        return best

    def _iterate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                 rows: torch.Tensor | None, best: _Best, target: torch.Tensor | None, *,
                 retire: bool, trace: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``steps`` gradient steps from ``x_adv`` (the examples at ``rows``; None: all), one
        forward and backward each, with the bookkeeping on the device. With ``retire``, every
        ``RETIRE_EVERY`` steps (one host sync) the examples already fooled stop, keeping their
        point, and the others go on alone. Returns the last iterate and its rows."""
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        for step in range(self.steps):
            with _counted(model, rows):
                loss, grad, logits = self.input_gradient(model, x_adv, ys,
                                                         self._loss_for(target, rows))
            best.update_rows(rows, x_adv, loss, logits, y)
            if trace:
                self.record_loss(best.trace(rows, loss))
            x_adv = self.project(xs, x_adv + self.step_size * self.direction(grad))
            if retire and (step + 1) % self.RETIRE_EVERY == 0 and step + 1 < self.steps:
                open_ = (~best.fooled if rows is None else ~best.fooled[rows])
                keep = open_.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return x_adv[:0], keep
                if keep.numel() < len(open_):
                    rows = keep if rows is None else rows[keep]
                    x_adv, xs, ys = x_adv[keep], xs[keep], ys[keep]
        return x_adv, rows

    def _judge_last(self, model: nn.Module, x_adv: torch.Tensor, rows: torch.Tensor | None,
                    y: torch.Tensor, best: _Best, target: torch.Tensor | None) -> None:
        """Evaluate the last iterate (of the examples at ``rows``; no gradient was taken there)
        where it can change the outcome: on the examples no earlier point misclassified (for
        the others it could only replace one misclassified point by another). One host sync
        per restart. A model in training mode (adversarial training) sees the whole batch, as
        its BatchNorm would."""
        if model.training:
            with torch.no_grad():
                logits = model(x_adv)
            best.update(x_adv, self._loss_for(target, None)(logits, y), logits, y)
            return
        positions = torch.arange(len(y), device=y.device) if rows is None else rows
        open_ = ~best.fooled[positions]
        local = open_.nonzero().squeeze(1)
        if local.numel() == 0:
            return
        idx = positions[local]
        assert best.logits is not None  # set by the steps
        with torch.no_grad(), subset_queries(model, idx):
            logits = best.logits.index_copy(0, idx, model(x_adv[local]))
        only = torch.zeros_like(best.fooled).index_fill_(0, idx, True)
        full_x = best.x.index_copy(0, idx, x_adv[local])
        best.update(full_x, self._loss_for(target, None)(logits, y), logits, y, only=only)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return step_direction(grad, self.norm)


def _counted(model: nn.Module, rows: torch.Tensor | None) -> Any:
    """Queries charged to the examples at ``rows`` (all when None)."""
    return nullcontext() if rows is None else subset_queries(model, rows)


class _Best:
    """Each example's best point so far: a misclassified one if any, else the highest loss;
    its logits come along, so the base class needs no extra forward to judge it."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), -math.inf, device=x.device)
        self.logits: torch.Tensor | None = None
        self._trace: torch.Tensor | None = None

    def update(self, x_adv: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor,
               y: torch.Tensor, only: torch.Tensor | None = None) -> None:
        """Take ``x_adv`` where it is better (of the examples in the bool mask ``only``)."""
        fooled = logits.argmax(1) != y
        better = (fooled & ~self.fooled) | ((fooled == self.fooled) & (loss > self.loss))
        if only is not None:
            better &= only
            fooled &= only
        self.x = torch.where(better.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, self.x)
        self.loss = torch.where(better, loss, self.loss)
        self.logits = logits if self.logits is None else torch.where(better[:, None], logits,
                                                                     self.logits)
        self.fooled |= fooled

    def update_rows(self, rows: torch.Tensor | None, x_adv: torch.Tensor, loss: torch.Tensor,
                    logits: torch.Tensor, y: torch.Tensor) -> None:
        """:meth:`update` with the points of the examples at ``rows`` (None: all)."""
        if rows is None:
            self.update(x_adv, loss, logits, y)
            return
        assert self.logits is not None  # the first restart's first step saw every example
        only = torch.zeros_like(self.fooled).index_fill_(0, rows, True)
        self.update(self.x.index_copy(0, rows, x_adv), self.loss.index_copy(0, rows, loss),
                    self.logits.index_copy(0, rows, logits), y, only=only)

    def trace(self, rows: torch.Tensor | None, loss: torch.Tensor) -> torch.Tensor:
        """Every example's latest loss (a retired example's frozen at its last step), for the
        loss trace."""
        if rows is None:
            self._trace = loss
        else:
            assert self._trace is not None
            self._trace = self._trace.index_copy(0, rows, loss)
        return self._trace


@ATTACKS.register()
class BIM(PGD):
    """Basic Iterative Method (Kurakin et al. 2017): PGD from x itself (no random start).

    Defaults follow the paper: step 1/255 and min(255 eps + 4, 1.25 * 255 eps) iterations.
    ``steps="ceil"``: ceil(eps / step_size) iterations, the SAP paper's iterative attack
    (step 1/255 for ceil(lambda) steps, lambda on the 0..255 scale).
    """

    name = "bim"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int | str | None = None,
                 step_size: float | None = None, loss: str = "ce", batch_size: int = 256,
                 seed: int | None = 0) -> None:
        step_size = 1 / 255 if step_size is None else step_size
        if steps is None:
            steps = max(1, math.ceil(min(255 * eps + 4, 1.25 * 255 * eps)))
        elif steps == "ceil":
            if step_size <= 0:
                raise ConfigError(f"{self.name}: steps=ceil needs a step_size > 0")
            steps = max(1, math.ceil(eps / step_size - 1e-9))
        elif isinstance(steps, str):
            raise ConfigError(f"{self.name}: steps must be an integer or 'ceil', got {steps!r}")
        super().__init__(eps=eps, norm=norm, steps=steps,
                         step_size=step_size,
                         random_start=False, restarts=1, loss=loss, batch_size=batch_size,
                         seed=seed)


@ATTACKS.register()
class MIFGSM(PGD):
    """Momentum iterative FGSM (Dong et al. 2018): g <- mu g + grad / ||grad||_1; step sign(g)."""

    name = "mifgsm"
    retires = False  # its momentum is per example and the whole batch's

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, decay: float = 1.0, loss: str = "ce",
                 batch_size: int = 256, seed: int | None = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps,
                         step_size=eps / steps if step_size is None else step_size,
                         random_start=False, restarts=1, loss=loss, batch_size=batch_size,
                         seed=seed)
        self.decay = float(decay)
        self._momentum: torch.Tensor | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "decay": self.decay}

    def run(self, model: nn.Module, x: torch.Tensor,
            y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._momentum = torch.zeros_like(x)
        return super().run(model, x, y)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        assert self._momentum is not None
        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        self._momentum = self.decay * self._momentum + grad / l1
        return step_direction(self._momentum, self.norm)


@ATTACKS.register()
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps
    (sign of the gradient for L-inf, the normalised gradient for L2).

    With ``random_start=True`` and ``step_size=1.25 * eps`` it is the "FGSM with random start"
    of fast adversarial training (Wong, Rice, Kolter 2020): a uniform point of the ball, one step
    of 1.25 eps from there, projected back onto the ball and [0, 1].

    Args:
        eps: radius on the [0, 1] scale.
        step_size: the step (default eps).
        random_start: start from a uniform point of the ball instead of x.
        loss: "ce", "margin" (CW) or "dlr".
    """

    name = "fgsm"

    def __init__(self, *, eps: float, norm: str = "linf", loss: str = "ce",
                 step_size: float | None = None, random_start: bool = False,
                 batch_size: int = 256, seed: int | None = 0) -> None:
        super().__init__(eps=eps, norm=norm, batch_size=batch_size, seed=seed)
        self.loss = loss
        self.loss_fn = get_loss(loss)
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ConfigError(f"{self.name}: step_size must be a number > 0, got {step_size}")
        self.step_size = self.eps if step_size is None else float(step_size)
        self.random_start = bool(random_start)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "loss": self.loss, "step_size": self.step_size,
                "random_start": self.random_start}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = random_start(x, self.eps, self.norm) if self.random_start else x
        _, grad, _ = self.input_gradient(model, start, y, self.loss_fn)
        return start + self.step_size * step_direction(grad, self.norm)
