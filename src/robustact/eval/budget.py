"""The cost bar of the adaptive suite on a randomized model, counted in model passes.

AutoAttack's rand version runs APGD-CE on every clean-correct point, then APGD-DLR on the
points it leaves robust, 100 iterations each through EOT over 20 passes. The adaptive suite
runs the same two attacks first (through as many passes as the model's noise needs), and its
``budgeted`` attacks after them (a second APGD-CE through more passes, Square) only while the
passes spent on the block stay within what AutoAttack's rand version would spend on it: the
passes the suite's first attacks saved by retiring the points they broke early pay for the
extra strength, and never more. Counting passes, not seconds, keeps the decision the same on
every machine and every rank.
"""

from __future__ import annotations

import math

from robustact.attacks import Attack
from robustact.eval.outcomes import AttackOutcome
from robustact.eval.suites import AUTOATTACK_RAND_EOT

__all__ = ["REFERENCE_ITERATIONS", "REFERENCE_EOT", "reference_passes", "spent_passes",
           "max_passes"]

#: AutoAttack's APGD iterations (and the one query at the start) in its rand version
REFERENCE_ITERATIONS = 101
#: AutoAttack's EOT passes in its rand version (the ``autoattack-rand`` suite's)
REFERENCE_EOT = AUTOATTACK_RAND_EOT


def reference_passes(clean: int, left_by_first: int) -> float:
    """Passes of AutoAttack's rand version: APGD-CE on the ``clean`` correct points, APGD-DLR
    on the ``left_by_first`` of them the first attack left robust."""
    return float(REFERENCE_ITERATIONS * REFERENCE_EOT * (clean + left_by_first))


def spent_passes(outcome: AttackOutcome) -> float:
    """Model passes an attack spent: queries per attacked point, times points, times EOT."""
    return outcome.queries * int(outcome.attacked.sum()) * (outcome.eot or 1)


def max_passes(attack: Attack, eot: int | None, points: int) -> float:
    """The most passes ``attack`` may spend on ``points`` points (inf if it has no bound)."""
    queries = getattr(attack, "queries", None)
    steps = getattr(attack, "steps", None)
    if isinstance(queries, int):
        per_point = queries + 1
    elif isinstance(steps, int):
        targets = getattr(attack, "n_target_classes", 1) if getattr(attack, "targeted",
                                                                     False) else 1
        per_point = (steps + 4) * getattr(attack, "restarts", 1) * targets
    else:
        return math.inf
    return float(per_point * (eot or 1) * points)
