"""The attack base class: it owns the invariants every attack shares.

An attack object holds keyword-only hyperparameters; it is called as ``attack(model, x, y)``.
:meth:`Attack.__call__` checks the inputs, puts the model in eval mode (and restores its mode),
takes the device from the model, splits the work into batches, projects every result onto the
eps-ball and [0, 1], counts model queries and judges success. Subclasses write only
:meth:`Attack.run`, one batch at a time, with the helpers below for the shared steps.

Units: images and eps are on the [0, 1] pixel scale; an L-inf eps of 8/255 is ``eps=8/255``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustact.attacks.losses import target_classes
from robustact.errors import ConfigError, InputError

#: the norms attacks can bound; an attack lists the ones it implements in ``norms``
ALL_NORMS = ("linf", "l2", "l1")
NORMS = ("linf", "l2")


@dataclass
class AttackResult:
    """What an attack returns, for N examples.

    Attributes:
        x_adv: adversarial inputs (N, C, H, W) in [0, 1], inside the eps-ball of x.
        success: bool (N,): the model's prediction on ``x_adv`` is not the label.
        norms: (N,) perturbation norm ||x_adv - x|| in the attack's norm, pixel scale.
        queries: int64 (N,) model forward passes spent on each example.
        loss_trace: mean attack loss after each iteration (iterative attacks; else empty).
        grad_bad_fraction: fraction of input-gradient entries that were exactly 0 or not finite,
            over all gradients the attack computed (None for gradient-free attacks).
        seconds: wall time.
        params: the attack's name and hyperparameters.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    queries: torch.Tensor
    loss_trace: list[float] = field(default_factory=list)
    grad_bad_fraction: float | None = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> float:
        """Fraction of examples the attack did not fool (clean errors count as fooled)."""
        return 1.0 - self.success.float().mean().item() if len(self.success) else math.nan


class QueryCounter(nn.Module):
    """Wraps a model and counts forward passes per example of the current batch.

    A forward on the whole batch (or ``r`` stacked copies of it) adds 1 (or ``r``) to every
    example; an attack that queries a subset sets ``index`` (the subset's positions) first.
    """

    def __init__(self, model: nn.Module, batch_size: int, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a wrapper takes the mode of what it wraps
        self.counts = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.index: torch.Tensor | None = None  # which examples of the batch x holds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._count(x)
        return self.model(x)

    def own_loss_gradient(self) -> Callable[..., tuple[torch.Tensor, ...]] | None:
        """The wrapped model's ``loss_gradient`` (EOT's), counting one query per call like
        :meth:`forward`; None if the model has none."""
        own = getattr(self.model, "loss_gradient", None)
        if own is None:
            return None

        def counted(x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, ...]:
            self._count(x)
            return own(x, *args)

        return counted

    def _count(self, x: torch.Tensor) -> None:
        if self.index is None:
            self.counts += x.shape[0] // max(self.counts.numel(), 1)
        else:
            self.counts.index_add_(0, self.index, torch.ones_like(self.index))


@dataclass
class _Stats:
    """Per-call bookkeeping, kept as device tensors (no host sync inside attack loops)."""

    loss: list[torch.Tensor] = field(default_factory=list)
    bad: torch.Tensor | int = 0
    total: torch.Tensor | int = 0
    tracing: bool = True  # off while a targeted attack works on its later target classes
    judging: bool = False  # set by __call__: only success counts, so an attack may stop
    #                        working on an example once it is fooled (not so for training)


class Attack:
    """Base class. Subclasses set ``name``, accept their hyperparameters keyword-only, call
    ``super().__init__(eps=..., norm=..., ...)`` and implement :meth:`run`."""

    name: ClassVar[str] = "attack"
    #: True for attacks that never read gradients (diagnostics compare them to white-box ones)
    gradient_free: ClassVar[bool] = False
    #: True when ``eps`` bounds the perturbation (minimum-norm attacks project afterwards)
    bounded: ClassVar[bool] = True
    #: the norms the attack implements
    norms: ClassVar[tuple[str, ...]] = NORMS

    def __init__(
        self, *, eps: float, norm: str = "linf", batch_size: int = 256, seed: int | None = 0
    ) -> None:
        if norm not in self.norms:
            raise ConfigError(f"{self.name}: norm must be {' or '.join(self.norms)}, "
                              f"got {norm!r}")
        if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
            raise ConfigError(f"{self.name}: eps must be a number >= 0 on the [0, 1] scale, "
                              f"got {eps!r}")
        if batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.eps = float(eps)
        self.norm = norm
        self.batch_size = int(batch_size)
        self.seed = seed
        self._stats = _Stats()

    # ---- what subclasses implement ------------------------------------------------------------
    def run(self, model: nn.Module, x: torch.Tensor,
            y: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Adversarial inputs for one batch (x in [0, 1], on the model's device), optionally
        with the model's logits on them (then the base class does not query them again)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """The attack's settings, stored with every result (override to add attack-specific)."""
        return {"eps": self.eps, "norm": self.norm}

    # ---- the invariants -------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        check_inputs(self.name, x, y)
        device = model_device(model)
        was_training = model.training
        model.eval()
        self._stats = _Stats(judging=True)
        start = time.perf_counter()
        generator_state = self._seed(device)
        outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        bad_logits = torch.zeros((), dtype=torch.int64, device=device)
        try:
            for lo in range(0, x.shape[0], self.batch_size):
                xb = x[lo:lo + self.batch_size].to(device)
                yb = y[lo:lo + self.batch_size].to(device)
                counter = QueryCounter(model, xb.shape[0], device)
                adv, logits = _split(self.run(counter, xb.detach().clone(), yb))
                projected = self.project(xb, adv)
                if logits is None or not torch.equal(projected, adv):
                    with torch.no_grad():  # judge the returned points (unless run already did)
                        logits = counter(projected)
                bad_logits += non_finite_rows(logits)
                wrong = logits.argmax(1) != yb
                adv = projected
                outputs.append((adv, wrong, counter.counts.clone()))
            check_logits(self.name, int(bad_logits), x.shape[0])
        finally:
            model.train(was_training)
            _restore_seed(generator_state)
        x_adv = torch.cat([o[0] for o in outputs])
        return AttackResult(
            x_adv=x_adv,
            success=torch.cat([o[1] for o in outputs]),
            norms=perturbation_norm(x_adv - x.to(device), self.norm),
            queries=torch.cat([o[2] for o in outputs]),
            loss_trace=self._loss_trace(),
            grad_bad_fraction=(float(self._stats.bad) / float(self._stats.total)
                               if float(self._stats.total) else None),
            seconds=time.perf_counter() - start,
            params={"attack": self.name, **self.hyperparameters()},
        )

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial inputs for training, the lean path of :meth:`__call__`.

        Runs :meth:`run` on the whole batch in the model's current mode (adversarial training
        crafts its examples in training mode, BatchNorm on batch statistics, as Madry et al.
        and Wong et al. do), draws from the global RNG without reseeding (each batch gets fresh
        random starts; the training seed makes the run reproducible), and skips the success
        judgement and the query count. The result is projected onto the eps-ball and [0, 1]
        and detached. x and y must already be on the model's device.
        """
        self._stats = _Stats()  # nothing accumulates over a training run
        adv, _ = _split(self.run(model, x.detach().clone(), y))
        return self.project(x, adv).detach()

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Onto the eps-ball around x (in the attack's norm) and then [0, 1]."""
        return project(x, x_adv, self.eps, self.norm)

    # ---- helpers for subclasses -----------------------------------------------------------------
    def input_gradient(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *, count: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example loss (B,), its gradient w.r.t. x (B, ...) and the logits (B, classes).

        The gradient of the summed loss is taken, so each example gets its own gradient. A
        model with its own ``loss_gradient(x, y, loss_fn)`` (EOT: the mean of the draws' loss
        gradients, chunk by chunk) gives all three itself. Records the fraction of zero /
        non-finite gradient entries for the diagnostics, over the examples of the bool mask
        ``count`` (default all): an attack passes the examples it still works on, since a loss
        can be flat once an example is fooled (DLR is exactly 1 when the true class is third).
        """
        own = (model.own_loss_gradient() if isinstance(model, QueryCounter)
               else getattr(model, "loss_gradient", None))
        if own is not None:
            loss, grad, logits = own(x, y, loss_fn)
            return loss, self.record_gradient(grad, count), logits
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = loss_fn(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), self.record_gradient(grad, count), logits.detach()

    def record_gradient(self, grad: torch.Tensor,
                        count: torch.Tensor | None = None) -> torch.Tensor:
        """Count the zero / non-finite entries of an input gradient (of the examples in the
        bool mask ``count``, default all) for the diagnostics, when the attack judges, and
        return the gradient with those entries set to 0 (no host sync)."""
        grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        if not self._stats.judging:  # crafting (perturb): nobody reads the counts
            return grad
        if count is None:
            self._stats.bad = self._stats.bad + (grad.numel() - torch.count_nonzero(grad))
            self._stats.total += grad.numel()
        else:
            per_example = grad[0].numel()
            rows = count.view(-1, *([1] * (grad.dim() - 1)))
            self._stats.bad = self._stats.bad + ((grad == 0) & rows).sum()
            self._stats.total = self._stats.total + count.sum() * per_example
        return grad

    def record_loss(self, loss: torch.Tensor) -> None:
        """Remember one iteration's per-example loss (averaged across batches afterwards)."""
        if self._stats.tracing:
            self._stats.loss.append(loss.detach().float().mean())

    def set_targeting(self, targeted: Any, n_target_classes: Any) -> None:
        """Check and keep the targeted-mode options ``targeted`` and ``n_target_classes`` (read
        by :meth:`targeting` and :meth:`targets_or_restarts`)."""
        self.targeted = check_flag(self.name, "targeted", targeted)
        self.n_target_classes = check_count(self.name, "n_target_classes", n_target_classes)

    def targeting(self) -> dict[str, Any]:
        """The targeted-mode settings for :meth:`hyperparameters` (attacks with ``targeted``
        and ``n_target_classes`` attributes)."""
        targeted = getattr(self, "targeted", False)
        return {"targeted": targeted,
                **({"n_target_classes": self.n_target_classes} if targeted else {})}

    def targets_or_restarts(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        restarts: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """``restarts(model, x, y[, target])`` (returning (points, misclassified)) once, or,
        with ``targeted``, toward each target class in turn (:meth:`over_targets`)."""
        if getattr(self, "targeted", False):
            return self.over_targets(model, x, y, self.n_target_classes, restarts)
        return restarts(model, x, y)[0]

    def over_targets(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_targets: int,
        single_run: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor],
                             tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """AutoAttack's targeted schedule for untargeted robustness (APGD-T, FAB-T).

        For rank r = 1..``n_targets`` (at most classes - 1) the target of each example is its
        r-th highest-scoring wrong class on the clean input; ``single_run(model, x, y, target)``
        runs on the examples not yet misclassified and returns (points, misclassified). Returns,
        per example, its misclassified point if one was found, else the last target's point
        (examples misclassified before the attack are returned unchanged). The loss trace
        follows the first target only.
        """
        with torch.no_grad():
            logits = model(x)
        fooled = logits.argmax(1) != y
        best = x.clone()
        try:
            for rank in range(1, min(n_targets, logits.shape[1] - 1) + 1):
                idx = (~fooled).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                self._stats.tracing = rank == 1
                target = target_classes(logits[idx], y[idx], rank)
                with subset_queries(model, idx):
                    adv, adv_fooled = single_run(model, x[idx], y[idx], target)
                best[idx] = adv
                fooled[idx] = adv_fooled
        finally:
            self._stats.tracing = True
        return best

    def _loss_trace(self) -> list[float]:
        if not self._stats.loss:
            return []
        return [float(v) for v in torch.stack(self._stats.loss).cpu()]

    def _seed(self, device: torch.device) -> Any:
        """Seed the global RNG for a reproducible attack, remembering the old state."""
        if self.seed is None:
            return None
        state = (torch.get_rng_state(),
                 torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        torch.manual_seed(self.seed)
        return state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


@contextmanager
def subset_queries(model: nn.Module, index: torch.Tensor) -> Iterator[None]:
    """Count the forwards made inside the block for the batch positions ``index`` only.

    ``index`` lists, for each row of the tensors forwarded, which example of the batch it belongs
    to (repeat a position to charge several rows to one example). A no-op for plain models.
    """
    if not isinstance(model, QueryCounter):
        yield
        return
    outer = model.index  # nested subsets: positions within the outer subset
    model.index = index if outer is None else outer[index]
    try:
        yield
    finally:
        model.index = outer


def _split(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, tuple):
        return out[0].detach(), out[1].detach()
    return out.detach(), None


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto {x' : ||x' - x|| <= eps} (per example) and then clip to [0, 1].

    Clipping to [0, 1] after the L2 or L1 projection only shrinks each coordinate's
    perturbation, so the result is inside both sets.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l1":
        delta = project_l1(delta, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * factor
    return (x + delta).clamp(0.0, 1.0)


def project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each example's ``delta`` onto the L1 ball of radius eps
    (Duchi et al. 2008: soft-threshold at the theta that makes the L1 norm eps; rows already
    inside are unchanged). No host sync."""
    flat = delta.flatten(1)
    magnitude = flat.abs()
    inside = magnitude.sum(1) <= eps
    mu = magnitude.sort(dim=1, descending=True).values
    cumsum = mu.cumsum(1)
    ranks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    positive = (mu - (cumsum - eps) / ranks) > 0
    rho = positive.sum(1).clamp_min(1)  # the count of coordinates left non-zero
    theta = ((cumsum.gather(1, (rho - 1)[:, None]).squeeze(1) - eps) / rho).clamp_min(0)
    shrunk = flat.sign() * (magnitude - theta[:, None]).clamp_min(0)
    return torch.where(inside[:, None], flat, shrunk).view_as(delta)


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """(N,) L-inf, L2 or L1 norm of each example's perturbation."""
    flat = delta.flatten(1)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    if norm == "linf":
        return flat.abs().amax(1)
    return flat.abs().sum(1) if norm == "l1" else flat.norm(dim=1)


def check_inputs(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """One-line errors for inputs no attack can use: not float images with one label each
    (ConfigError), an empty batch or NaN / inf pixels (InputError), pixels outside [0, 1]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ConfigError(f"{name}: x must be a float tensor of images in [0, 1]")
    if x.dim() < 2 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(f"{name}: expected x (N, ...) and labels y (N,), got {tuple(x.shape)} "
                          f"and {tuple(y.shape)}")
    check_images(name, x)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ConfigError(f"{name}: inputs must be in [0, 1] (got {x.min().item():.3g}.."
                          f"{x.max().item():.3g}); normalization belongs inside the model")


def check_images(name: str, x: torch.Tensor) -> None:
    """An :class:`InputError` when the batch ``x`` (N, ...) is empty or holds a NaN or inf
    pixel (a NaN passes every range check, since comparisons with it are false)."""
    if x.shape[0] == 0:
        raise InputError(f"{name}: the batch is empty (0 images); give at least one image")
    finite = torch.isfinite(x.detach()).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().squeeze(1)
        raise InputError(f"{name}: {bad.numel()} of {x.shape[0]} images hold NaN or inf pixels "
                         f"(the first at index {int(bad[0])}); repair or drop them, images "
                         "must be finite and in [0, 1]")


def check_logits(name: str, n_bad: int, n: int) -> None:
    """An :class:`InputError` when the model returned NaN / inf logits on ``n_bad`` of ``n``
    points: a prediction made of NaN is no prediction, and must not count as a success."""
    if n_bad:
        raise InputError(f"{name}: the model returned NaN/inf logits on {n_bad} of {n} points; "
                         "its predictions there mean nothing, so no attack success is "
                         "reported: check the model's weights (a diverged training?) and inputs")


def non_finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(,) count of the rows of ``logits`` (N, classes) holding a NaN or inf (no host sync)."""
    return (~torch.isfinite(logits).all(1)).sum()


def check_flag(name: str, key: str, value: Any) -> bool:
    """A boolean option, or a one-line error (``bpda=abc`` must not read as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: {key} must be true or false, got {value!r}")
    return value


def check_in(name: str, key: str, value: Any, interval: str) -> float:
    """A number option inside ``interval``, written as the message shows it ("(0, 1]", "[0, 1]",
    "(0, 1)"), as a float; or a one-line error."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = low < value if interval[0] == "(" else low <= value
    below = value < high if interval[-1] == ")" else value <= high
    if not (above and below):
        raise ConfigError(f"{name}: {key} must be in {interval}, got {value}")
    return float(value)


def check_count(name: str, key: str, value: Any, minimum: int = 1) -> int:
    """An integer option >= ``minimum``, or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _restore_seed(state: Any) -> None:
    if state is None:
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])
