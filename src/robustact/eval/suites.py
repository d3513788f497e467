"""Attack suites as presets: one word names a whole evaluation.

- ``autoattack``: AutoAttack's standard version (Croce & Hein 2020) with its published budgets:
  APGD-CE (100 steps, 1 restart), APGD-T (100 steps, 9 target classes), FAB-T (100 steps,
  9 target classes), Square (5000 queries, p_init 0.8), L-inf or L2.
- ``autoattack-rand``: AutoAttack's version for randomized models: APGD-CE and APGD-DLR with
  EOT over 20 passes.
- ``adaptive`` (the default): what robustact holds strongest for the model at hand. It looks
  at the model first: a randomized model (repeated passes differ) is attacked through EOT, and
  judged on predictions averaged over enough passes for a stable decision
  (:func:`stable_samples`); layers that declare a BPDA surrogate (k-WTA) are differentiated
  through it, and the plain gradient is tried as well. The attacks: APGD on the cross-entropy,
  APGD-T on the targeted DLR loss, and Square (gradient-free, on the margin loss); for a
  randomized model APGD on the DLR loss replaces the targeted runs, as in AutoAttack's rand
  version. Each attack runs only on the points still robust. On a randomized model the two
  APGD runs take the EOT passes at which two gradient estimates agree to cosine 0.6 (about
  AutoAttack's 20 on the demo's SAP network), then a third APGD-CE takes the passes that reach
  0.8 (:func:`stable_eot`) on the points left, and Square follows: these two are *budgeted*,
  they run only while the passes spent stay within AutoAttack-rand's on the same points
  (:mod:`robustact.eval.budget`), so the suite never costs more than the reference.

A suite is resolved for a model into a :class:`Suite`: its attack specs and what was found.
Each suite is a function registered with ``@SUITES.register(name)`` that builds it from what
:func:`resolve_suite` found out about the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.attacks.wrappers import BPDA, is_randomized
from robustact.errors import ConfigError
from robustact.eval.randomness import predicted_passes, stable_eot, stable_samples
from robustact.eval.spec import AttackSpec
from robustact.registry import Registry

#: AutoAttack's EOT passes in its rand version
AUTOATTACK_RAND_EOT = 20
#: the gradient agreement of the EOT passes of a randomized model's first attacks (the
#: budgeted APGD-CE after them takes the passes that reach stable_eot's 0.8)
FIRST_COSINE = 0.6
#: points used to decide randomness, EOT passes and judging passes
PROBE_POINTS = 32


@dataclass
class Suite:
    """A resolved suite: the attacks to run in sequence and what the resolution found.

    ``n_samples``: passes per prediction when judging (1 for a deterministic model);
    ``eot``: the most EOT passes of its gradient attacks (None when deterministic); ``bpda``:
    names of the layers that declare a surrogate; ``notes``: one line per decision, for the
    record."""

    name: str
    specs: list[AttackSpec]
    randomized: bool
    n_samples: int
    eot: int | None = None
    bpda: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "attacks": [s.label for s in self.specs],
                "randomized": self.randomized, "n_samples": self.n_samples, "eot": self.eot,
                "bpda": self.bpda, "notes": self.notes}


#: ``build(model, x, y, norm, randomized, n_samples, notes) -> Suite`` (x, y: the probe points)
SuiteBuilder = Callable[[nn.Module, torch.Tensor, torch.Tensor, str, bool, int, list[str]], Suite]

SUITES: Registry[SuiteBuilder] = Registry("suite", separator="-")


def list_suites() -> list[str]:
    return SUITES.names()


def canonical_suite(name: str) -> str:
    key = str(name)
    if key not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES.names())} "
                          "(or 'none' for only the attacks you list)")
    return SUITES.resolve(key)


def resolve_suite(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  norm: str = "linf", n_samples: int | None = None) -> Suite:
    """The suite ``name`` for ``model`` (in eval mode), looked at on the first points of x.

    ``n_samples``: passes per prediction; None lets the suite choose (1 for a deterministic
    model, :func:`stable_samples` for a randomized one)."""
    key = canonical_suite(name)
    if norm not in ("linf", "l2"):
        raise ConfigError(f"suite {key} is defined for norm linf or l2, got {norm!r}")
    device = next(model.parameters()).device
    px, py = x[:PROBE_POINTS].to(device), y[:PROBE_POINTS].to(device)
    randomized = bool(len(px)) and is_randomized(model, px)
    notes = [f"the model is {'randomized' if randomized else 'deterministic'} "
             "(repeated forward passes " + ("differ)" if randomized else "agree)")]
    if n_samples is None:
        n_samples = stable_samples(model, px, py) if randomized else 1
        if randomized:
            notes.append(f"predictions averaged over {n_samples} passes (two judgings of the "
                         "clean points disagree on at most 1%)")
    return SUITES.get(key)(model, px, py, norm, randomized, n_samples, notes)


def autoattack_specs(norm: str) -> list[AttackSpec]:
    """AutoAttack's standard version with its published budgets (L-inf and L2)."""
    return [AttackSpec("apgd_ce", {"norm": norm, "steps": 100, "restarts": 1}, group="suite"),
            AttackSpec("apgd_t", {"norm": norm, "steps": 100, "n_target_classes": 9},
                       group="suite"),
            AttackSpec("fab", {"norm": norm, "steps": 100, "targeted": True,
                               "n_target_classes": 9}, label="fab_t", group="suite"),
            AttackSpec("square", {"norm": norm, "queries": 5000, "p_init": 0.8}, group="suite")]


@SUITES.register("autoattack")
def _autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                randomized: bool, n_samples: int, notes: list[str]) -> Suite:
    """AutoAttack's standard version (:func:`autoattack_specs`)."""
    return Suite("autoattack", autoattack_specs(norm), randomized, n_samples, notes=notes)


@SUITES.register("autoattack-rand")
def _autoattack_rand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                     randomized: bool, n_samples: int, notes: list[str]) -> Suite:
    """AutoAttack's version for randomized models: APGD-CE and APGD-DLR through EOT."""
    specs = [AttackSpec("apgd_ce", {"norm": norm}, eot=AUTOATTACK_RAND_EOT, group="suite"),
             AttackSpec("apgd_dlr", {"norm": norm}, eot=AUTOATTACK_RAND_EOT, group="suite")]
    return Suite("autoattack-rand", specs, randomized, n_samples, eot=AUTOATTACK_RAND_EOT,
                 notes=notes)


@SUITES.register("adaptive")
def _adaptive(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, randomized: bool,
              n_samples: int, notes: list[str]) -> Suite:
    """What robustact holds strongest for the model at hand (see the module's docstring)."""
    surrogates = BPDA(model).layers
    bpda = bool(surrogates)
    if bpda:
        notes.append(f"{len(surrogates)} layers declare a BPDA surrogate "
                     f"({', '.join(surrogates[:3])}{', ...' if len(surrogates) > 3 else ''}): "
                     "gradient attacks run through it, and on the plain gradient")
    eot = stable = None
    if randomized:
        stable, agreement = stable_eot(model, x, y)
        eot = min(stable, predicted_passes(stable, agreement, FIRST_COSINE))
        agree = f"two estimates of the input gradient agree to cosine {agreement:.2f}"
        notes.append(f"gradient attacks average {eot} EOT passes ({agree})" if eot == stable
                     else f"gradient attacks average {eot} EOT passes, the budgeted APGD-CE "
                     f"{stable} ({agree} at {stable}, about {FIRST_COSINE} at {eot})")
    classes = _classes(model, x)
    specs = [AttackSpec("apgd_ce", {"norm": norm}, eot=eot, bpda=bpda, group="suite")]
    if bpda:
        specs.append(AttackSpec("apgd_ce", {"norm": norm}, eot=eot, group="suite"))
    if randomized or classes < 4:  # AutoAttack's rand version; targeted DLR needs 4 classes
        loss = "dlr" if classes >= 3 else "margin"
        specs.append(AttackSpec("apgd", {"norm": norm, "loss": loss}, eot=eot, bpda=bpda,
                                label=f"apgd_{loss}", group="suite"))
    else:
        targets = {"n_target_classes": min(9, classes - 1)}
        specs.append(AttackSpec("apgd_t", {"norm": norm, **targets}, eot=eot, bpda=bpda,
                                group="suite"))
        if bpda:
            specs.append(AttackSpec("apgd_t", {"norm": norm, **targets}, group="suite"))
    if stable is not None and eot is not None and stable > eot:  # the survivors, less noise
        specs.append(AttackSpec("apgd_ce", {"norm": norm}, eot=stable, bpda=bpda,
                                group="budgeted"))
    # score-based: on a randomized model each query is an EOT average of a few passes, and the
    # budget is smaller (random search through noisy scores is the weakest attack there)
    square_eot = max(2, eot // 8) if eot else None
    specs.append(AttackSpec("square", {"norm": norm, "queries": 500 if eot else 5000,
                                       "p_init": 0.8}, eot=square_eot,
                            group="budgeted" if randomized else "suite"))
    return Suite("adaptive", specs, randomized, n_samples, eot=stable, bpda=surrogates,
                 notes=notes)


@torch.no_grad()
def _classes(model: nn.Module, x: torch.Tensor) -> int:
    return int(model(x[:1]).shape[1]) if len(x) else 10
