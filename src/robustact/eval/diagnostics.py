"""Automatic gradient-masking diagnostics, computed with every evaluation.

Each check says in plain words what it saw. They follow the checklist of Carlini et al. 2019,
AutoAttack's warnings and Pintor et al. 2022's indicators of attack failure:

- ``randomized_without_eot``: repeated forward passes differ but no gradient attack used EOT;
- ``iterative_worse_than_single_step``: FGSM broke significantly more of the probed points
  than the strongest iterative attack did on the same points;
- ``blackbox_beats_whitebox``: a gradient-free or transfer attack broke points that every
  white-box attack left robust;
- ``no_collapse_at_large_eps``: accuracy does not fall to ~0 at a very large eps;
- ``bad_gradients``: a large fraction of the input gradients is exactly zero or not finite;
- ``loss_not_rising``: an iterative attack's loss did not increase over its iterations;
- ``not_converged``: the strongest attack with twice the iterations and more restarts (on a
  randomized model: twice the EOT passes) breaks points the whole evaluation left robust;
- ``overestimates``: an attack reported on its own (a paper-style attack beside a suite, or
  any attack run independently) left robust points that other attacks broke; the message says
  by how much it overestimates robustness. A weak attack is not a masking model, so this check
  informs the report but not the verdict.

The probes use the strongest gradient attack of the evaluation (the iterative white-box attack
with the most EOT passes, BPDA first, then the first listed), with its EOT and BPDA, and reuse
the main run's outcomes instead of recomputing them: FGSM is compared with the strongest
attack's own results on the same points, and the stronger run attacks only the points the
whole evaluation left robust. Differences between two runs on the same points are judged by
an exact McNemar test on the points where they disagree (significant at 5%), not by a fixed
tolerance. On a randomized model each judging is the double judging of
:func:`robustact.eval.randomness.judge`.

One more check is not about the attacks: ``degenerate_predictions`` fires when the model gives
(nearly) the same answer to every input, or is no better than always answering the most common
label. Such a model (e.g. a training run that diverged) looks robust, since no perturbation
changes a constant answer; its robust accuracy says nothing about a defense.

The probes run on up to ``probe_size`` clean-correct examples at the largest evaluated eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.eval.outcomes import AttackOutcome, RobustnessReport
from robustact.eval.randomness import judge, predict
from robustact.eval.spec import AttackSpec
from robustact.eval.stats import mcnemar_exact, significantly_more

ITERATIVE = ("pgd", "bim", "mifgsm", "apgd", "apgd_ce", "apgd_dlr", "apgd_t")
NO_MASKING = "no sign of gradient masking"
DEGENERATE = "degenerate_predictions"
#: checks that do not speak of gradient masking (they never change the verdict)
INFORMATIONAL = ("overestimates",)


@dataclass
class Check:
    name: str
    fired: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Diagnostics:
    checks: list[Check]

    @property
    def fired(self) -> list[Check]:
        return [c for c in self.checks if c.fired]

    @property
    def verdict(self) -> str:
        # a weak attack reported on its own says nothing about the model: its check informs
        # the report (flags, messages) but not the verdict
        fired = [c for c in self.fired if c.name not in INFORMATIONAL]
        if not fired:
            return NO_MASKING
        masking = ", ".join(c.name for c in fired if c.name != DEGENERATE)
        masking = "gradient masking suspected: " + masking if masking else ""
        if any(c.name == DEGENERATE for c in fired):  # the first thing to know
            return "; ".join(filter(None, [f"robust accuracy not meaningful: {DEGENERATE}",
                                           masking]))
        return masking

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict,
                "checks": [{"name": c.name, "fired": c.fired, "message": c.message,
                            "details": c.details} for c in self.checks]}

    def summary(self) -> str:
        lines = [f"verdict: {self.verdict}"]
        lines += [f"  [{'!' if c.fired else 'ok'}] {c.name}: {c.message}" for c in self.checks]
        return "\n".join(lines)


def _tolerance(n: int) -> float:
    """How far above the majority label's rate a clean accuracy must be not to read as
    chance: 5 points of 100 (used by the degenerate-predictions check only)."""
    return max(0.05, 5.0 / max(n, 1))


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, report: RobustnessReport,
             specs: list[AttackSpec], *, probe_size: int = 200, n_samples: int = 1) -> Diagnostics:
    """Run every check (see the module docstring); ``specs`` are the evaluated attacks."""
    probe = torch.zeros_like(report.clean_correct)
    probe[report.clean_correct.nonzero().squeeze(1)[:probe_size]] = True
    eps = max(report.eps_list)
    white = [s for s in specs if not _gradient_free(s)]
    norm = white[0].kwargs.get("norm", "linf") if white else "linf"
    strongest = _strongest(report, specs, eps)
    checks = [
        _check_degenerate(model, x, y, n_samples),
        _check_randomized(report, specs),
        _check_bad_gradients(report),
        _check_loss_trace(report),
        _check_blackbox(report),
        _check_overestimates(report),
    ]
    if probe.any():
        judge_on = _Judge(model, x, y, n_samples, report.randomized)
        spec = strongest[0] if strongest else AttackSpec("pgd", {"steps": 20, "norm": norm})
        checks.append(_check_large_eps(judge_on, probe, spec, norm, eps))
        if strongest is not None:
            checks += [_check_single_step(judge_on, probe, *strongest, norm),
                       _check_convergence(judge_on, probe, *strongest, report)]
    return Diagnostics(checks)


@dataclass
class _Judge:
    """Runs an attack on a subset of the evaluated points and judges it as the main run does."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    n_samples: int
    randomized: bool

    def correct(self, spec: AttackSpec, eps: float, mask: torch.Tensor) -> torch.Tensor:
        """(N,) bool: not broken by ``spec`` at ``eps`` on the points of ``mask`` (True
        elsewhere). On a randomized model a point counts as broken only if both judgings are
        wrong, so judging noise never reads as a probe's success."""
        index = mask.nonzero().squeeze(1)
        out = torch.ones_like(mask)
        if index.numel():
            result = spec.build(eps)(spec.wrap(self.model), self.x[index], self.y[index])
            out[index] = ~judge(self.model, result.x_adv, self.y[index], self.n_samples,
                                self.randomized).broken
        return out


def _strongest(report: RobustnessReport, specs: list[AttackSpec],
               eps: float) -> tuple[AttackSpec, AttackOutcome] | None:
    """The iterative white-box attack with the most EOT passes (BPDA first, then the first
    listed) and its outcome at ``eps``."""
    ranked = [(i, s) for i, s in enumerate(specs)
              if not _gradient_free(s) and _canonical(s.name) in ITERATIVE]
    if not ranked:
        return None
    _, spec = min(ranked, key=lambda p: (-(p[1].eot or 0), not p[1].bpda, p[0]))
    outcome = next((o for o in report.outcomes if o.label == spec.label and o.eps == eps), None)
    return (spec, outcome) if outcome is not None else None


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")


def _gradient_free(spec: AttackSpec) -> bool:
    from robustact.attacks import ATTACKS

    return bool(getattr(ATTACKS.get(spec.name), "gradient_free", False))


def _check_degenerate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      n_samples: int) -> Check:
    """Near-constant predictions, or clean accuracy no better than the majority label's rate."""
    pred = predict(model, x, n_samples).cpu()
    labels = y.cpu()
    n = max(len(labels), 1)
    top_class = int(pred.mode().values) if len(pred) else -1
    top_share = (pred == top_class).float().mean().item() if len(pred) else 0.0
    majority = (labels.bincount().max().item() / n) if len(labels) else 0.0
    accuracy = (pred == labels).float().mean().item() if len(labels) else 0.0
    constant = top_share >= max(0.5, 2 * majority)
    chance = accuracy <= majority + _tolerance(n)
    fired = len(labels) > 0 and (constant or chance)
    message = (f"{100 * top_share:.1f}% of the {len(labels)} predictions are class {top_class} "
               f"(most common label {100 * majority:.1f}%); clean accuracy {100 * accuracy:.1f}%")
    message += (": robust accuracy of a near-constant or chance-level model measures no defense"
                if fired else "")
    return Check(DEGENERATE, fired, message,
                 {"top_class": top_class, "top_share": top_share, "majority_label": majority,
                  "accuracy": accuracy})


def _check_randomized(report: RobustnessReport, specs: list[AttackSpec]) -> Check:
    randomized = report.randomized
    eot = [s.label for s in specs if s.eot and not _gradient_free(s)]
    fired = randomized and not eot
    if not randomized:
        message = "repeated forward passes agree: the model is deterministic"
    elif eot:
        message = f"the model is randomized and was attacked with EOT ({', '.join(eot)})"
    else:
        message = ("the model is randomized (repeated forward passes differ) but no gradient "
                   "attack used EOT; add eot=N to an attack (e.g. pgd:eot=32) or use the "
                   "adaptive suite")
    flips = sum(o.flips for o in report.outcomes) + report.clean_flips
    if randomized:
        message += (f"; predictions averaged over {report.n_samples} passes, judged twice: "
                    f"{flips} judgings of a point disagreed")
    return Check("randomized_without_eot", fired, message,
                 {"randomized": randomized, "flips": flips, "n_samples": report.n_samples})


def _check_bad_gradients(report: RobustnessReport) -> Check:
    worst = max(((o.grad_bad_fraction, o.label) for o in report.outcomes
                 if o.grad_bad_fraction is not None), default=(None, None))
    fired = worst[0] is not None and worst[0] > 0.5
    message = (f"{100 * worst[0]:.0f}% of the input-gradient entries of {worst[1]} were zero or "
               "not finite" if worst[0] is not None else "no gradient attack was run")
    if fired:
        message += ": the gradient carries little information (shattered or masked gradients)"
    return Check("bad_gradients", fired, message, {"fraction": worst[0], "attack": worst[1]})


def _check_loss_trace(report: RobustnessReport) -> Check:
    flat = []
    for o in report.outcomes:
        trace = o.loss_trace
        if len(trace) >= 2 and all(math.isfinite(v) for v in trace):
            rise = max(trace[1:]) - trace[0]
            if rise <= 1e-6 * max(1.0, abs(trace[0])):
                flat.append(f"{o.label} at eps {o.eps:g}")
    if flat:
        return Check("loss_not_rising", True,
                     f"the attack loss never rose above its starting value for {', '.join(flat)}"
                     ": the optimiser made no progress", {"attacks": flat})
    return Check("loss_not_rising", False, "every iterative attack increased its loss")


def _check_blackbox(report: RobustnessReport) -> Check:
    details: dict[str, Any] = {}
    fired_at = []
    for eps in report.eps_list:
        at = [o for o in report.outcomes if o.eps == eps]
        white = [o for o in at if not o.gradient_free]
        free = [o for o in at if o.gradient_free]
        if not white or not free:
            continue
        white_robust = report.clean_correct.clone()
        for o in white:
            white_robust &= o.correct | ~o.attacked  # unattacked here = broken earlier by free
        for o in free:
            only = int((white_robust & o.attacked & ~o.correct).sum())
            details[f"{o.label}@{eps:g}"] = only
            if only >= max(3, 0.02 * report.n):
                fired_at.append(f"{o.label} broke {only} points the white-box attacks "
                                f"left robust at eps {eps:g}")
    if not details:
        return Check("blackbox_beats_whitebox", False,
                     "no gradient-free or transfer attack ran beside a white-box one", details)
    if fired_at:
        return Check("blackbox_beats_whitebox", True, "; ".join(fired_at)
                     + ": the white-box gradients are misleading", details)
    return Check("blackbox_beats_whitebox", False,
                 "gradient-free and transfer attacks found nothing the white-box ones missed",
                 details)


def _check_overestimates(report: RobustnessReport) -> Check:
    """Attacks reported on their own whose robust points other attacks broke."""
    lines, points, flagged = [], {}, []
    for o in report.outcomes:
        independent = o.group == "paper" or (o.group is None and not report.sequential)
        if not independent:
            continue
        worst = report.worst_case(o.eps)
        over = int((o.correct & ~worst).sum())
        points[f"{o.label}@{o.eps:g}"] = over
        if significantly_more(over, 0):
            flagged.append(f"{o.label}@{o.eps:g}")
            lines.append(f"{o.label}: {100 * o.robust_accuracy:.1f}% at eps {o.eps:g} where the "
                         f"worst case is {100 * worst.float().mean().item():.1f}%: {over} points "
                         "it left robust were broken by other attacks")
    details = {"points": points, "flagged": flagged}
    if not points:
        return Check("overestimates", False, "no attack was reported on its own", details)
    if lines:
        return Check("overestimates", True, "; ".join(lines), details)
    return Check("overestimates", False, "no attack reported on its own overestimates "
                 "robustness significantly", details)


def _check_single_step(judge_on: _Judge, probe: torch.Tensor, spec: AttackSpec,
                       outcome: AttackOutcome, norm: str) -> Check:
    points = probe & outcome.attacked
    fgsm = AttackSpec("fgsm", {"norm": norm}, eot=spec.eot, bpda=spec.bpda)
    fgsm_correct = judge_on.correct(fgsm, outcome.eps, points)
    iter_correct = outcome.correct | ~points
    b = int((points & ~fgsm_correct & iter_correct).sum())  # FGSM broke, iterative did not
    c = int((points & fgsm_correct & ~iter_correct).sum())
    n = int(points.sum())
    fired = significantly_more(b, c)
    message = (f"at eps {outcome.eps:g} on {n} points: {spec.label} leaves "
               f"{_pct(iter_correct, points)}, FGSM {_pct(fgsm_correct, points)} (FGSM alone "
               f"broke {b}, {spec.label} alone {c}; McNemar p = {mcnemar_exact(b, c):.2g})")
    if fired:
        message += ": the iterative attack did worse than a single step"
    return Check("iterative_worse_than_single_step", fired, message,
                 {"fgsm_only": b, "iterative_only": c, "points": n, "eps": outcome.eps})


def _pct(correct: torch.Tensor, points: torch.Tensor) -> str:
    n = int(points.sum())
    return f"{100 * int((correct & points).sum()) / max(n, 1):.1f}%"


def _check_large_eps(judge_on: _Judge, probe: torch.Tensor, iterative: AttackSpec, norm: str,
                     eps: float) -> Check:
    big = min(1.0, max(0.5, 4 * eps)) if norm == "linf" else max(20.0, 8 * eps)
    # one short run: at this eps an unbroken attack succeeds at once (restarts only cost)
    kwargs = {**iterative.kwargs, "steps": 20}
    for key in ("restarts", "n_target_classes"):
        if key in kwargs:
            kwargs[key] = 1
    spec = AttackSpec(iterative.name, kwargs, eot=iterative.eot, bpda=iterative.bpda,
                      label=iterative.label)
    correct = judge_on.correct(spec, big, probe)
    acc = int((correct & probe).sum()) / max(int(probe.sum()), 1)
    fired = acc > 0.10
    message = f"{spec.label} at eps {big:g} leaves {100 * acc:.1f}% of {int(probe.sum())} points"
    message += (": an unbounded attack should reach ~0%, so the attack is failing, not the model "
                "defending" if fired else " (~0% as it should)")
    return Check("no_collapse_at_large_eps", fired, message, {"eps": big, "accuracy": acc})


def _check_convergence(judge_on: _Judge, probe: torch.Tensor, spec: AttackSpec,
                       outcome: AttackOutcome, report: RobustnessReport) -> Check:
    eps = outcome.eps
    survivors = probe & report.worst_case(eps)
    stronger = _stronger(spec, eps, report.randomized)
    correct = judge_on.correct(stronger, eps, survivors)
    broken = int((survivors & ~correct).sum())
    n_probe = int(probe.sum())
    fired = significantly_more(broken, 0)
    message = (f"at eps {eps:g}: {stronger.label} on the {int(survivors.sum())} of {n_probe} "
               f"probed points every attack left robust broke {broken} "
               f"(McNemar p = {mcnemar_exact(broken, 0):.2g})")
    if fired:
        message += (f": the evaluation has not converged; its worst case overestimates "
                    f"robustness by about {100 * broken / max(n_probe, 1):.1f} points")
    return Check("not_converged", fired, message,
                 {"survivors": int(survivors.sum()), "broken": broken, "eps": eps,
                  "settings": {**stronger.kwargs, "eot": stronger.eot, "bpda": stronger.bpda}})


def _stronger(spec: AttackSpec, eps: float, randomized: bool) -> AttackSpec:
    """``spec`` with twice the iterations at the same step and two more restarts or, on a
    randomized model, twice the EOT passes (at least 16) at the same iterations (the noise of
    the gradient is what limits an attack there; the probe costs twice the attack)."""
    kwargs = dict(spec.kwargs)
    if randomized:
        eot = max(2 * (spec.eot or 1), 16)
        return AttackSpec(spec.name, kwargs, eot=eot, bpda=spec.bpda,
                          label=f"{spec.label} with eot {eot}")
    built = spec.build(eps)  # the attack's own resolved settings (BIM's steps may be a rule)
    steps = int(getattr(built, "steps", kwargs.get("steps", 40)))
    stronger = {**kwargs, "steps": 2 * steps}
    if _canonical(spec.name) in ("pgd", "apgd", "apgd_ce", "apgd_dlr", "apgd_t"):
        stronger["restarts"] = int(getattr(built, "restarts", 1)) + 2
    if "rel_step" not in kwargs and hasattr(built, "step_size"):  # APGD adapts its own
        stronger["step_size"] = float(built.step_size)  # same step, twice as many
    return AttackSpec(spec.name, stronger, eot=spec.eot, bpda=spec.bpda,
                      label=f"{spec.label} x2 steps")
