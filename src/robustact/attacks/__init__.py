"""Attacks: objects holding keyword-only hyperparameters, called as ``attack(model, x, y)``.

    >>> from robustact.attacks import create_attack, EOT, BPDA
    >>> pgd = create_attack("pgd", eps=8 / 255, steps=40, restarts=10)
    >>> result = pgd(model, x, y)   # result.x_adv, result.success, result.norms, result.queries
    >>> result = pgd(EOT(BPDA(model), n=32), x, y)   # adaptive: surrogate gradients, averaged

White-box: fgsm, bim, pgd, mifgsm, apgd (apgd-ce, apgd-dlr, apgd-t), fab, cw, deepfool; pgd and apgd
take targeted=true (AutoAttack's top-scoring wrong classes as targets). Gradient-free:
square, gradest (the gradient-estimation attack that broke k-WTA), transfer (crafted on a
surrogate model). Eps is always on the [0, 1] pixel scale.

Each attack class registers itself with ``@ATTACKS.register()`` (the name is its ``name``
attribute); importing its module here is what registers it.
"""

from robustact.attacks.apgd import APGD, APGDCE, APGDDLR, APGDT
from robustact.attacks.base import Attack, AttackResult, perturbation_norm, project
from robustact.attacks.cw import CW
from robustact.attacks.deepfool import DeepFool
from robustact.attacks.fab import FAB
from robustact.attacks.gradient_estimation import GradientEstimation
from robustact.attacks.losses import LOSSES, get_loss
from robustact.attacks.pgd import BIM, FGSM, MIFGSM, PGD
from robustact.attacks.registry import ATTACKS, create_attack, list_attacks
from robustact.attacks.square import Square
from robustact.attacks.transfer import Transfer
from robustact.attacks.wrappers import BPDA, EOT, is_randomized

__all__ = [
    "APGD", "APGDCE", "APGDDLR", "APGDT", "ATTACKS", "BIM", "BPDA", "CW", "EOT", "FAB", "FGSM",
    "LOSSES", "MIFGSM", "PGD", "Attack", "AttackResult", "DeepFool", "GradientEstimation", "Square",
    "Transfer",
    "create_attack", "get_loss", "is_randomized", "list_attacks", "perturbation_norm", "project",
]
