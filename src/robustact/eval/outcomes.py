"""What an evaluation measured, per example: each attack's outcome and the whole report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from robustact.eval.stats import wilson_interval

__all__ = ["AttackOutcome", "RobustnessReport"]


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
    group: str | None = None  # "suite", "paper" or None (see AttackSpec)
    flips: int = 0  # attacked points whose two judgings disagreed (randomized models)

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
    suite: Any = None  # robustact.eval.suites.Suite
    randomized: bool = False
    clean_flips: int = 0

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
                             attacked=int(outcome.attacked.sum()), group=outcome.group,
                             flips=outcome.flips))
        for eps in self.eps_list:
            worst = self.worst_case(eps)
            lo, hi = wilson_interval(int(worst.sum()), self.n)
            rows.append(_row("worst_case", eps, worst.float().mean().item(), lo, hi, self.n))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "eps_list": self.eps_list, "n_samples": self.n_samples,
            "sequential": self.sequential, "seconds": self.seconds,
            "clean_accuracy": self.clean_accuracy, "randomized": self.randomized,
            "clean_flips": self.clean_flips,
            "suite": self.suite.to_dict() if self.suite is not None else None,
            "rows": self.rows(),
            "attacks": [{
                "label": o.label, "name": o.name, "eps": o.eps, "params": o.params,
                "group": o.group, "flips": o.flips,
                "suite": self.suite.name if o.group == "suite" and self.suite else None,
                "gradient_free": o.gradient_free, "eot": o.eot, "bpda": o.bpda,
                "loss_trace": o.loss_trace, "grad_bad_fraction": o.grad_bad_fraction,
                "correct": o.correct.int().tolist(), "attacked": o.attacked.int().tolist(),
            } for o in self.outcomes],
            "clean_correct": self.clean_correct.int().tolist(),
            "diagnostics": self.diagnostics.to_dict() if self.diagnostics is not None else None,
        }


def _row(attack: str, eps: float | None, acc: float, lo: float, hi: float, n: int,
         **extra: Any) -> dict[str, Any]:
    return {"attack": attack, "eps": eps, "robust_accuracy": acc, "ci_low": lo, "ci_high": hi,
            "n": n, "robust": round(acc * n), **extra}
