"""Robust accuracy under a suite of attacks, per example, with confidence intervals.

    report = evaluate(model, loader, ["fgsm", "pgd:steps=40", "deepfool", "square"],
                      eps_list=[0.1, 0.2], n_examples=1000)
    report.table()          # robust accuracy per attack and eps, and the worst case
    report.diagnostics      # gradient-masking checks and the verdict

Attacks run in sequence, each only on the points still robust (AutoAttack's order of work);
``sequential=False`` runs every attack on every clean-correct point, so each attack's number
stands alone (the seed papers' tables). A randomized model is judged on predictions averaged
over ``n_samples`` forward passes: an attack succeeds only if the averaged prediction is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.attacks import Attack, create_attack
from robustact.errors import ConfigError
from robustact.eval.stats import wilson_interval


@dataclass
class AttackSpec:
    """An attack by registry name and hyperparameters (eps is set per evaluation eps).

    ``eot``: wrap the model in ``EOT(model, eot)`` for this attack (expectation over the
    randomness); ``bpda``: wrap it in ``BPDA(model)`` (surrogate gradients of masking layers).
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    eot: int | None = None
    bpda: bool = False
    label: str | None = None

    def __post_init__(self) -> None:
        if self.label is None:
            extras = ([f"eot{self.eot}"] if self.eot else []) + (["bpda"] if self.bpda else [])
            self.label = "+".join([self.name, *extras])

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | AttackSpec) -> AttackSpec:
        """``"pgd"``, ``"pgd:steps=40,restarts=5,eot=32"``, a dict or an AttackSpec."""
        if isinstance(spec, AttackSpec):
            return spec
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("name", None)
            if not name:
                raise ConfigError(f"attack spec {spec!r} needs a name")
            return cls(name, eot=spec.pop("eot", None), bpda=bool(spec.pop("bpda", False)),
                       label=spec.pop("label", None), kwargs=spec)
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"attack spec must be a name, a dict or an AttackSpec: {spec!r}")
        name, _, rest = spec.partition(":")
        options: dict[str, Any] = {"name": name.strip()}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"attack option {item!r} in {spec!r} must be KEY=VALUE")
            options[key.strip()] = _scalar(value.strip())
        return cls.parse(options)

    def build(self, eps: float) -> Attack:
        if self.name == "transfer":
            return self._build_transfer(eps)
        return create_attack(self.name, eps=eps, **self.kwargs)

    def _build_transfer(self, eps: float) -> Attack:
        """``transfer:surrogate=PATH,inner=pgd,steps=40``: the inner attack (default PGD, with
        the remaining options) runs on the surrogate; PATH is a robustact checkpoint."""
        kwargs = dict(self.kwargs)
        surrogate = kwargs.pop("surrogate", None)
        if surrogate is None:
            raise ConfigError("transfer needs a surrogate model: transfer:surrogate=CHECKPOINT")
        name = kwargs.pop("surrogate_name", None)
        inner = kwargs.pop("inner", "pgd")
        if isinstance(surrogate, str):
            from robustact.train.checkpoint import load_model

            name = name or surrogate
            surrogate, _ = load_model(surrogate)
        return create_attack("transfer", eps=eps, surrogate=surrogate, surrogate_name=name,
                             attack=create_attack(inner, eps=eps, **kwargs),
                             norm=kwargs.get("norm", "linf"))

    def wrap(self, model: nn.Module) -> nn.Module:
        from robustact.attacks.wrappers import BPDA, EOT

        if self.bpda:
            model = BPDA(model)
        if self.eot:
            model = EOT(model, int(self.eot))
        return model


def _scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


@dataclass
class AttackOutcome:
    """One attack at one eps. ``correct[i]``: example i is still classified correctly after
    this attack (False when an earlier attack or the clean input was already wrong);
    ``attacked[i]``: the attack ran on example i."""

    label: str
    name: str
    eps: float
    correct: torch.Tensor
    attacked: torch.Tensor
    gradient_free: bool
    eot: int | None
    bpda: bool
    params: dict[str, Any]
    seconds: float
    loss_trace: list[float] = field(default_factory=list)
    grad_bad_fraction: float | None = None
    queries: float = 0.0  # mean model queries per attacked example

    @property
    def robust_accuracy(self) -> float:
        return self.correct.float().mean().item()

    def interval(self) -> tuple[float, float]:
        return wilson_interval(int(self.correct.sum()), self.correct.numel())


@dataclass
class RobustnessReport:
    """Everything :func:`evaluate` measured; ``to_dict`` / ``rows`` serialise it."""

    n: int
    eps_list: list[float]
    clean_correct: torch.Tensor
    outcomes: list[AttackOutcome]
    n_samples: int
    sequential: bool
    seconds: float
    diagnostics: Any = None  # robustact.eval.diagnostics.Diagnostics

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()

    def worst_case(self, eps: float) -> torch.Tensor:
        """(N,) bool: correct under every attack at ``eps`` (and on the clean input)."""
        correct = self.clean_correct.clone()
        for outcome in self.outcomes:
            if outcome.eps == eps:
                correct &= outcome.correct
        return correct

    def accuracy(self, label: str, eps: float) -> float:
        for outcome in self.outcomes:
            if outcome.label == label and outcome.eps == eps:
                return outcome.robust_accuracy
        raise KeyError(f"no result for attack {label!r} at eps {eps}")

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per (attack, eps), plus clean and worst-case rows (for CSV)."""
        lo, hi = wilson_interval(int(self.clean_correct.sum()), self.n)
        rows = [_row("clean", None, self.clean_accuracy, lo, hi, self.n)]
        for outcome in self.outcomes:
            lo, hi = outcome.interval()
            rows.append(_row(outcome.label, outcome.eps, outcome.robust_accuracy, lo, hi,
                             self.n, seconds=outcome.seconds, queries=outcome.queries,
                             attacked=int(outcome.attacked.sum())))
        for eps in self.eps_list:
            worst = self.worst_case(eps)
            lo, hi = wilson_interval(int(worst.sum()), self.n)
            rows.append(_row("worst_case", eps, worst.float().mean().item(), lo, hi, self.n))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "eps_list": self.eps_list, "n_samples": self.n_samples,
            "sequential": self.sequential, "seconds": self.seconds,
            "clean_accuracy": self.clean_accuracy,
            "rows": self.rows(),
            "attacks": [{
                "label": o.label, "name": o.name, "eps": o.eps, "params": o.params,
                "gradient_free": o.gradient_free, "eot": o.eot, "bpda": o.bpda,
                "loss_trace": o.loss_trace, "grad_bad_fraction": o.grad_bad_fraction,
                "correct": o.correct.int().tolist(), "attacked": o.attacked.int().tolist(),
            } for o in self.outcomes],
            "clean_correct": self.clean_correct.int().tolist(),
            "diagnostics": self.diagnostics.to_dict() if self.diagnostics is not None else None,
        }

    def table(self) -> str:
        """A plain-text table: robust accuracy (%) per attack (rows) and eps (columns)."""
        labels = list(dict.fromkeys(o.label for o in self.outcomes))
        head = f"{'attack':<22}" + "".join(f"{'eps ' + format(e, '.4g'):>14}"
                                           for e in self.eps_list)
        lines = [head, f"{'clean':<22}" + f"{100 * self.clean_accuracy:>13.1f}%"]
        for label in labels:
            cells = []
            for eps in self.eps_list:
                try:
                    cells.append(f"{100 * self.accuracy(label, eps):>13.1f}%")
                except KeyError:
                    cells.append(f"{'-':>14}")
            lines.append(f"{label:<22}" + "".join(cells))
        worst = "".join(f"{100 * self.worst_case(e).float().mean().item():>13.1f}%"
                        for e in self.eps_list)
        lines.append(f"{'worst case':<22}" + worst)
        return "\n".join(lines)


def _row(attack: str, eps: float | None, acc: float, lo: float, hi: float, n: int,
         **extra: Any) -> dict[str, Any]:
    return {"attack": attack, "eps": eps, "robust_accuracy": acc, "ci_low": lo, "ci_high": hi,
            "n": n, "robust": round(acc * n), **extra}


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


def collect(data: Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor],
            n_examples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_examples`` (all if None) images and labels of a loader or an (x, y) pair."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
    else:
        xs, ys, count = [], [], 0
        for xb, yb in data:
            xs.append(xb.cpu())
            ys.append(yb.cpu())
            count += yb.shape[0]
            if n_examples is not None and count >= n_examples:
                break
        if not xs:
            raise ConfigError("no examples to evaluate: the loader is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    return x, y


def evaluate(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor],
    attacks: Sequence[str | dict[str, Any] | AttackSpec],
    eps_list: Sequence[float],
    n_examples: int | None = None,
    *,
    n_samples: int = 1,
    sequential: bool = True,
    diagnose: bool = True,
    probe_size: int = 200,
    progress: Callable[[str], None] | None = None,
) -> RobustnessReport:
    """Robust accuracy of ``model`` under every attack at every eps (see the module docstring).

    Returns per-example correctness for every (attack, eps), the per-example worst case, robust
    accuracies with 95% Wilson intervals, timings, and (``diagnose``) the gradient-masking
    diagnostics computed on up to ``probe_size`` examples.
    """
    specs = [AttackSpec.parse(a) for a in attacks]
    if not specs:
        raise ConfigError("give at least one attack, e.g. fgsm,pgd")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two attacks share a label ({', '.join(labels)}); give one of them "
                          "label=NAME")
    eps_values = [float(e) for e in eps_list]
    if not eps_values or min(eps_values) < 0:
        raise ConfigError(f"eps values must be >= 0, got {list(eps_list)}")
    start = time.perf_counter()
    x, y = collect(data, n_examples)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        y_dev = y.to(device)
        clean = (predict(model, x, n_samples) == y_dev).cpu()
        outcomes = []
        for eps in eps_values:
            alive = clean.clone()
            for spec in specs:
                targets = alive if sequential else clean
                if progress is not None:
                    progress(f"{spec.label} eps={eps:g} on {int(targets.sum())} points")
                outcome = _run_attack(model, spec, eps, x, y, targets, n_samples)
                outcomes.append(outcome)
                if sequential:
                    alive &= outcome.correct
        report = RobustnessReport(n=len(y), eps_list=eps_values, clean_correct=clean,
                                  outcomes=outcomes, n_samples=n_samples, sequential=sequential,
                                  seconds=0.0)
        if diagnose:
            from robustact.eval.diagnostics import diagnose as run_diagnostics

            report.diagnostics = run_diagnostics(model, x, y, report, specs,
                                                 probe_size=probe_size, n_samples=n_samples)
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def _run_attack(model: nn.Module, spec: AttackSpec, eps: float, x: torch.Tensor,
                y: torch.Tensor, targets: torch.Tensor, n_samples: int) -> AttackOutcome:
    attack = spec.build(eps)
    index = targets.nonzero().squeeze(1)
    correct = targets.clone()
    result = None
    start = time.perf_counter()
    if index.numel():
        result = attack(spec.wrap(model), x[index], y[index])
        still = predict(model, result.x_adv, n_samples).cpu() == y[index]
        correct[index] = still
    return AttackOutcome(
        label=spec.label or spec.name, name=spec.name, eps=eps, correct=correct,
        attacked=targets.clone(), gradient_free=type(attack).gradient_free, eot=spec.eot,
        bpda=spec.bpda, params={**attack.hyperparameters(), "eot": spec.eot, "bpda": spec.bpda},
        seconds=time.perf_counter() - start,
        loss_trace=result.loss_trace if result else [],
        grad_bad_fraction=result.grad_bad_fraction if result else None,
        queries=result.queries.float().mean().item() if result else 0.0,
    )
