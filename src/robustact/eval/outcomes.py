"""What an evaluation measured, per example: each attack's outcome and the whole report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from robustact.eval.stats import wilson_interval

__all__ = ["AttackOutcome", "RobustnessReport", "merge_outcomes"]


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


def merge_outcomes(parts: list[dict[str, Any]]) -> AttackOutcome:
    """One attack's outcome over all points from its outcomes on consecutive blocks of them
    (``dataclasses.asdict`` of each): per-example results joined in order, times and flips
    summed, loss traces, queries and gradient checks averaged over the attacked points."""
    weights = [int(p["attacked"].sum()) for p in parts]
    bad = [(p["grad_bad_fraction"], w) for p, w in zip(parts, weights, strict=True)
           if p["grad_bad_fraction"] is not None and w]
    return AttackOutcome(**{
        **parts[0],
        "correct": torch.cat([p["correct"] for p in parts]),
        "attacked": torch.cat([p["attacked"] for p in parts]),
        "seconds": sum(p["seconds"] for p in parts),
        "flips": sum(p["flips"] for p in parts),
        "queries": _weighted([(p["queries"], w) for p, w in zip(parts, weights, strict=True)]),
        "grad_bad_fraction": _weighted(bad) if bad else None,
        "loss_trace": _mean_trace([(p["loss_trace"], w)
                                   for p, w in zip(parts, weights, strict=True)]),
    })


def _weighted(pairs: list[tuple[float, int]]) -> float:
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else 0.0


def _mean_trace(pairs: list[tuple[list[float], int]]) -> list[float]:
    """The attacked-point-weighted mean of the blocks' loss traces, step by step."""
    length = max((len(trace) for trace, w in pairs if w), default=0)
    return [_weighted([(trace[i], w) for trace, w in pairs if w and i < len(trace)])
            for i in range(length)]


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
