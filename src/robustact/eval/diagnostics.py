"""Automatic gradient-masking diagnostics, computed with every evaluation.

Each check says in plain words what it saw. They follow the checklist of Carlini et al. 2019,
AutoAttack's warnings and Pintor et al. 2022's indicators of attack failure:

- ``randomized_without_eot``: repeated forward passes differ but no gradient attack used EOT;
- ``iterative_worse_than_single_step``: an iterative attack left more points robust than FGSM;
- ``blackbox_beats_whitebox``: a gradient-free or transfer attack broke points that every
  white-box attack left robust;
- ``no_collapse_at_large_eps``: accuracy does not fall to ~0 at a very large eps;
- ``bad_gradients``: a large fraction of the input gradients is exactly zero or not finite;
- ``loss_not_rising``: an iterative attack's loss did not increase over its iterations;
- ``not_converged``: twice the iterations and more restarts still lower the accuracy.

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

from robustact.eval.robustness import AttackSpec, RobustnessReport, predict

ITERATIVE = ("pgd", "bim", "mifgsm", "apgd", "apgd_ce", "apgd_dlr")
NO_MASKING = "no sign of gradient masking"
DEGENERATE = "degenerate_predictions"


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
        fired = self.fired
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
    """Accuracy differences below this are noise for diagnostics on n points: 5 points of 100
    (a plain ReLU network gains a few points from more restarts without masking anything)."""
    return max(0.05, 5.0 / max(n, 1))


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, report: RobustnessReport,
             specs: list[AttackSpec], *, probe_size: int = 200, n_samples: int = 1) -> Diagnostics:
    """Run every check (see the module docstring); ``specs`` are the evaluated attacks."""
    probe = report.clean_correct.nonzero().squeeze(1)[:probe_size]
    px, py = x[probe], y[probe]
    eps = max(report.eps_list)
    white = [s for s in specs if not _gradient_free(s)]
    norm = white[0].kwargs.get("norm", "linf") if white else "linf"
    iterative = next((s for s in white if _canonical(s.name) in ITERATIVE),
                     AttackSpec("pgd", {"steps": 20, "norm": norm}))
    checks = [
        _check_degenerate(model, x, y, n_samples),
        _check_randomized(model, px, specs),
        _check_bad_gradients(report),
        _check_loss_trace(report),
        _check_blackbox(report),
    ]
    if len(probe):
        checks += [
            _check_single_step(model, px, py, eps, iterative, norm, n_samples),
            _check_large_eps(model, px, py, iterative, norm, eps, n_samples),
            _check_convergence(model, px, py, eps, iterative, n_samples),
        ]
    return Diagnostics(checks)


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")


def _gradient_free(spec: AttackSpec) -> bool:
    from robustact.attacks import ATTACKS

    return bool(getattr(ATTACKS.get(spec.name), "gradient_free", False))


def _probe_accuracy(model: nn.Module, spec: AttackSpec, eps: float, x: torch.Tensor,
                    y: torch.Tensor, n_samples: int) -> float:
    result = spec.build(eps)(spec.wrap(model), x, y)
    return (predict(model, result.x_adv, n_samples).cpu() == y).float().mean().item()


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


def _check_randomized(model: nn.Module, x: torch.Tensor, specs: list[AttackSpec]) -> Check:
    from robustact.attacks.wrappers import is_randomized

    randomized = bool(len(x)) and is_randomized(model, x[:16])
    eot = [s.label for s in specs if s.eot and not _gradient_free(s)]
    fired = randomized and not eot
    if not randomized:
        message = "repeated forward passes agree: the model is deterministic"
    elif eot:
        message = f"the model is randomized and was attacked with EOT ({', '.join(eot)})"
    else:
        message = ("the model is randomized (repeated forward passes differ) but no gradient "
                   "attack used EOT; add eot=N to an attack (e.g. pgd:eot=32)")
    return Check("randomized_without_eot", fired, message, {"randomized": randomized})


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


def _check_single_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                       iterative: AttackSpec, norm: str, n_samples: int) -> Check:
    fgsm = AttackSpec("fgsm", {"norm": norm}, eot=iterative.eot, bpda=iterative.bpda)
    acc_fgsm = _probe_accuracy(model, fgsm, eps, x, y, n_samples)
    acc_iter = _probe_accuracy(model, iterative, eps, x, y, n_samples)
    fired = acc_iter > acc_fgsm + _tolerance(len(y))
    message = (f"at eps {eps:g} on {len(y)} points: {iterative.label} leaves "
               f"{100 * acc_iter:.1f}%, FGSM {100 * acc_fgsm:.1f}%")
    if fired:
        message += ": the iterative attack did worse than a single step"
    return Check("iterative_worse_than_single_step", fired, message,
                 {"fgsm": acc_fgsm, iterative.label or "iterative": acc_iter, "eps": eps})


def _check_large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     iterative: AttackSpec, norm: str, eps: float, n_samples: int) -> Check:
    big = min(1.0, max(0.5, 4 * eps)) if norm == "linf" else max(20.0, 8 * eps)
    # one run of 50 steps: at this eps an unbroken attack succeeds at once (restarts only cost)
    kwargs = {**iterative.kwargs, "steps": 50}
    if "restarts" in kwargs:
        kwargs["restarts"] = 1
    spec = AttackSpec(iterative.name, kwargs, eot=iterative.eot, bpda=iterative.bpda,
                      label=iterative.label)
    acc = _probe_accuracy(model, spec, big, x, y, n_samples)
    fired = acc > 0.10
    message = f"{spec.label} at eps {big:g} leaves {100 * acc:.1f}% of {len(y)} points"
    message += (": an unbounded attack should reach ~0%, so the attack is failing, not the model "
                "defending" if fired else " (~0% as it should)")
    return Check("no_collapse_at_large_eps", fired, message, {"eps": big, "accuracy": acc})


def _check_convergence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                       iterative: AttackSpec, n_samples: int) -> Check:
    kwargs = dict(iterative.kwargs)
    base_acc = _probe_accuracy(model, iterative, eps, x, y, n_samples)
    # the attack's own resolved settings: steps may be a rule ("ceil" for BIM) or a default
    built = iterative.build(eps)
    steps = int(getattr(built, "steps", kwargs.get("steps", 40)))
    stronger = {**kwargs, "steps": 2 * steps}
    if _canonical(iterative.name) in ("pgd", "apgd", "apgd_ce", "apgd_dlr"):
        stronger["restarts"] = int(kwargs.get("restarts", 1)) + 2
    if "rel_step" not in kwargs and hasattr(built, "step_size"):  # APGD adapts its own
        stronger["step_size"] = float(built.step_size)  # same step, twice as many
    spec = AttackSpec(iterative.name, stronger, eot=iterative.eot, bpda=iterative.bpda)
    more_acc = _probe_accuracy(model, spec, eps, x, y, n_samples)
    fired = more_acc < base_acc - _tolerance(len(y))
    message = (f"at eps {eps:g}: {iterative.label} leaves {100 * base_acc:.1f}%, with 2x steps "
               f"and more restarts {100 * more_acc:.1f}%")
    if fired:
        message += ": the attack has not converged; the reported accuracy is an overestimate"
    return Check("not_converged", fired, message,
                 {"base": base_acc, "stronger": more_acc, "settings": stronger, "eps": eps})
