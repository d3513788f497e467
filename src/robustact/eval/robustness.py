"""Robust accuracy under a suite of attacks, per example, with confidence intervals.

    report = evaluate(model, loader, ["fgsm", "pgd:steps=40", "deepfool"], eps_list=[0.1],
                      suite="adaptive", n_examples=1000)
    report.rows()           # robust accuracy per attack and eps, and the worst case
    report.diagnostics      # gradient-masking checks and the verdict

``suite`` names a preset (:mod:`robustact.eval.suites`: ``adaptive``, ``autoattack``,
``autoattack-rand``), resolved for the model: its attacks run in sequence, each only on the
points still robust (AutoAttack's order of work). The attacks listed beside it are the
paper-style ones: each runs on every clean-correct point, so its number stands alone (the seed
papers' tables), and the diagnostics say by how much it overestimates robustness. Without a
suite the listed attacks run in sequence, or (``sequential=False``) each on every clean-correct
point. The worst case of a point is over every attack run at that eps.

A randomized model is judged on predictions averaged over ``n_samples`` forward passes (None:
as many as a stable decision needs, :func:`robustact.eval.randomness.stable_samples`), twice
with independent draws: a point is robust only if both judgings are right, and the points
where they disagree are counted (``flips``).

The points are evaluated in blocks of ``block``, each seeded from (``seed``, its index),
spread over the processes of a torchrun group and saved in ``shards`` as they finish
(:mod:`robustact.eval.shards`): the result does not depend on the number of processes, and a
rerun reads the saved blocks back. The diagnostics run in rank 0 alone.

No points, NaN / inf pixels and NaN / inf logits of the model (on the clean points, or on an
attack's points) are an :class:`~robustact.errors.InputError`: a point the model cannot score
is never counted as broken by an attack.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import check_images, check_logits, non_finite_rows
from robustact.distributed import current
from robustact.errors import ConfigError, InputError
from robustact.eval.budget import max_passes, reference_passes, spent_passes
from robustact.eval.diagnostics import diagnose as run_diagnostics
from robustact.eval.outcomes import AttackOutcome, RobustnessReport, merge_outcomes
from robustact.eval.randomness import Judgement, judge, predict, stable_samples
from robustact.eval.shards import BLOCK, Block, ShardDir, Span, run_blocks, seed_everything
from robustact.eval.spec import AttackSpec

__all__ = ["AttackOutcome", "AttackSpec", "RobustnessReport", "collect", "evaluate", "predict"]


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
            raise InputError("no examples to evaluate: the loader is empty; check the "
                             "dataset and the number of points asked for")
        x, y = torch.cat(xs), torch.cat(ys)
    if n_examples is not None:
        if n_examples < 1:
            raise InputError(f"no examples to evaluate: n = {n_examples}; give the number of "
                             "test points, e.g. 1000")
        x, y = x[:n_examples], y[:n_examples]
    return x, y


def evaluate(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor],
    attacks: Sequence[str | dict[str, Any] | AttackSpec] = (),
    eps_list: Sequence[float] = (),
    n_examples: int | None = None,
    *,
    suite: str | None = None,
    norm: str = "linf",
    n_samples: int | None = 1,
    sequential: bool = True,
    diagnose: bool = True,
    probe_size: int = 200,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
    block: int = BLOCK,
    shards: ShardDir | None = None,
) -> RobustnessReport:
    """Robust accuracy of ``model`` under ``suite`` and ``attacks`` at every eps (see the
    module docstring).

    Returns per-example correctness for every (attack, eps), the per-example worst case, robust
    accuracies with 95% Wilson intervals, timings, and (``diagnose``) the gradient-masking
    diagnostics computed on up to ``probe_size`` examples. ``seed``, ``block``, ``shards``:
    see the module docstring.
    """
    specs = [AttackSpec.parse(a) for a in attacks]
    suite = None if suite in (None, "none") else suite
    eps_values = _checked(specs, suite, eps_list, n_samples)
    start = time.perf_counter()
    x, y = collect(data, n_examples)
    check_images("evaluate", x)
    device, ctx, was_training = next(model.parameters()).device, current(), model.training
    model.eval()
    try:
        seed_everything(seed)
        resolved, n_samples, randomized = _resolve(model, x, y, suite, norm, n_samples)
        if resolved is not None:
            specs = [_as_paper(s) for s in specs]
        all_specs = (resolved.specs if resolved else []) + specs
        _check_labels(all_specs)

        def compute(span: Span) -> Block:
            return _block(model, all_specs, eps_values, x[span.lo:span.hi],
                          y[span.lo:span.hi].to(device), n_samples, randomized, sequential,
                          _in_block(progress, span, block, len(y)))

        blocks = run_blocks(len(y), block, seed, compute, shards=shards, ctx=ctx, log=progress)
        clean_correct, clean_flips, outcomes = _merge(blocks)
        report = RobustnessReport(len(y), eps_values, clean_correct, outcomes, n_samples,
                                  sequential, 0.0, suite=resolved, randomized=randomized,
                                  clean_flips=clean_flips)
        if diagnose and ctx.is_main:  # the other processes' reports are not recorded
            seed_everything(seed)
            report.diagnostics = run_diagnostics(model, x, y, report, all_specs,
                                                 probe_size=probe_size, n_samples=n_samples)
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def _checked(specs: list[AttackSpec], suite: str | None, eps_list: Sequence[float],
             n_samples: int | None) -> list[float]:
    """The eps values, once the arguments of :func:`evaluate` are known to make sense."""
    if not specs and suite is None:
        raise ConfigError("give a suite (adaptive, autoattack, autoattack-rand) or at least one "
                          "attack, e.g. fgsm,pgd")
    eps_values = [float(e) for e in eps_list]
    if not eps_values or min(eps_values) < 0:
        raise ConfigError(f"eps values must be >= 0, got {list(eps_list)}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1 (or None: as many as a stable decision "
                          f"needs), got {n_samples}")
    return eps_values


def _block(model: nn.Module, specs: list[AttackSpec], eps_values: list[float], x: torch.Tensor,
           y: torch.Tensor, n_samples: int, randomized: bool, sequential: bool,
           progress: Callable[[str], None] | None) -> Block:
    """The clean judging and every attack at every eps on one block of points."""
    clean = _judge_clean(model, x, y, n_samples, randomized)
    outcomes = [outcome for eps in eps_values
                for outcome in _attack_at(model, specs, eps, x, y, clean.correct,
                                          n_samples, randomized, sequential, progress)]
    return {"clean": clean.correct, "clean_flips": clean.flips,
            "outcomes": [dataclasses.asdict(o) for o in outcomes]}


@torch.no_grad()
def _judge_clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_samples: int,
                 randomized: bool, batch_size: int = 512) -> Judgement:
    """:func:`judge` of the clean points, with an :class:`InputError` when the model's logits
    on them hold NaN or inf (such points cannot be evaluated and must not count as broken by
    an attack). A deterministic model is judged from the same forward passes, exactly as
    :func:`predict` judges it; a randomized one pays one more pass."""
    device = next(model.parameters()).device
    bad, predictions = 0, []
    for lo in range(0, x.shape[0], batch_size):
        logits = model(x[lo:lo + batch_size].to(device)).float()
        bad += int(non_finite_rows(logits))
        predictions.append(logits.softmax(1).argmax(1).cpu())
    check_logits("evaluate (clean points)", bad, x.shape[0])
    if randomized or n_samples > 1:
        return judge(model, x, y, n_samples, randomized)
    correct = torch.cat(predictions) == y.cpu()
    return Judgement(correct, ~correct, 0)


def _in_block(progress: Callable[[str], None] | None, span: Span, size: int,
              n: int) -> Callable[[str], None] | None:
    """Progress messages prefixed with the block, when there is more than one."""
    if progress is None or n <= size:
        return progress
    total = -(-n // size)
    return lambda message: progress(f"block {span.index + 1}/{total}: {message}")


def _merge(blocks: list[Block]) -> tuple[torch.Tensor, int, list[AttackOutcome]]:
    """(clean correctness, clean flips, outcomes) of all points from the blocks' results."""
    clean = torch.cat([b["clean"] for b in blocks])
    flips = sum(int(b["clean_flips"]) for b in blocks)
    parts = zip(*(b["outcomes"] for b in blocks), strict=True)
    return clean, flips, [merge_outcomes(list(p)) for p in parts]


def _attack_at(model: nn.Module, specs: list[AttackSpec], eps: float, x: torch.Tensor,
               y: torch.Tensor, clean: torch.Tensor, n_samples: int, randomized: bool,
               sequential: bool, progress: Callable[[str], None] | None,
               ) -> list[AttackOutcome]:
    """Every attack at one eps: suite attacks (and, without a suite, sequential ones) on the
    points still robust, paper-style ones on every clean-correct point; a budgeted suite
    attack only if it fits in what is left of the suite's budget (:mod:`..budget`)."""
    alive = clean.clone()
    outcomes: list[AttackOutcome] = []
    ledger = _Ledger(int(clean.sum()))
    for spec in specs:
        in_sequence = spec.group in ("suite", "budgeted") or (spec.group is None and sequential)
        targets = alive if in_sequence else clean
        skip = ledger.refusal(spec, eps, int(targets.sum())) if spec.group == "budgeted" else None
        if progress is not None:
            progress(f"{spec.label} eps={eps:g} "
                     + (f"skipped: {skip}" if skip else f"on {int(targets.sum())} points"))
        if skip:
            targets = torch.zeros_like(targets)
        outcome = _run_attack(model, spec, eps, x, y, targets, n_samples, randomized)
        if skip:
            outcome.correct, outcome.params["skipped"] = alive.clone(), skip
        outcomes.append(outcome)
        if in_sequence:
            alive &= outcome.correct
            ledger.add(outcome, int(alive.sum()))
    return outcomes


class _Ledger:
    """The passes a block's suite attacks spent, against AutoAttack's rand version's."""

    def __init__(self, clean: int) -> None:
        self.clean, self.spent, self.left_by_first = clean, 0.0, None

    def add(self, outcome: AttackOutcome, alive: int) -> None:
        self.spent += spent_passes(outcome)
        if self.left_by_first is None:
            self.left_by_first = alive

    def refusal(self, spec: AttackSpec, eps: float, points: int) -> str | None:
        """Why ``spec`` may not run on ``points`` points (None: it fits the budget)."""
        budget = reference_passes(self.clean, self.left_by_first or 0)
        cost = max_passes(spec.build(eps), spec.eot, points)
        if self.spent + cost <= budget:
            return None
        return (f"its {cost:,.0f} passes would take the suite past AutoAttack-rand's "
                f"{budget:,.0f} ({self.spent:,.0f} spent)")


def _resolve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: str | None, norm: str,
             n_samples: int | None) -> tuple[Any, int, bool]:
    """(resolved suite or None, passes per prediction, randomized)."""
    from robustact.attacks.wrappers import is_randomized

    if suite is not None:
        from robustact.eval.suites import resolve_suite

        resolved = resolve_suite(suite, model, x, y, norm=norm, n_samples=n_samples)
        return resolved, resolved.n_samples, resolved.randomized
    device = next(model.parameters()).device
    randomized = bool(len(x)) and is_randomized(model, x[:16].to(device))
    if n_samples is None:
        n_samples = (stable_samples(model, x[:32].to(device), y[:32].to(device))
                     if randomized else 1)
    return None, n_samples, randomized


def _as_paper(spec: AttackSpec) -> AttackSpec:
    return spec if spec.group is not None else dataclasses.replace(spec, group="paper")


def _check_labels(specs: list[AttackSpec]) -> None:
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two attacks share a label ({', '.join(map(str, labels))}); give one "
                          "of them label=NAME")


def _run_attack(model: nn.Module, spec: AttackSpec, eps: float, x: torch.Tensor,
                y: torch.Tensor, targets: torch.Tensor, n_samples: int,
                randomized: bool) -> AttackOutcome:
    attack = spec.build(eps)
    index = targets.nonzero().squeeze(1)
    correct = targets.clone()
    result = None
    flips = 0
    start = time.perf_counter()
    if index.numel():
        result = attack(spec.wrap(model), x[index], y[index])
        verdict = judge(model, result.x_adv, y[index], n_samples, randomized)
        correct[index] = verdict.correct
        flips = verdict.flips
    return AttackOutcome(
        label=spec.label or spec.name, name=spec.name, eps=eps, correct=correct,
        attacked=targets.clone(), gradient_free=type(attack).gradient_free, eot=spec.eot,
        bpda=spec.bpda, params={**attack.hyperparameters(), "eot": spec.eot, "bpda": spec.bpda},
        seconds=time.perf_counter() - start,
        loss_trace=result.loss_trace if result else [],
        grad_bad_fraction=result.grad_bad_fraction if result else None,
        queries=result.queries.float().mean().item() if result else 0.0,
        group=spec.group, flips=flips,
    )
