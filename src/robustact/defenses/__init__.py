"""Post hoc defenses of trained networks, applied and removed in place.

Stochastic Activation Pruning (SAP) and the stochastic baselines of its paper (DRO, RNW, RSW,
DWP, SWP, RNA, RSA).

    >>> from robustact.defenses import apply_sap, remove_sap, apply_defense, remove_defense
    >>> apply_sap(model, frac=1.0)             # SAP-100 after every activation
    >>> remove_sap(model)                      # exactly the model before
    >>> apply_defense(model, "rnw", s=0.01)    # see list_defenses()

Importing this package also registers the ``"sap"`` activation (:class:`ReLUSAP`).
"""

from robustact.defenses.layers import (
    DefendedActivation,
    GaussianNoise,
    GaussianScaling,
    NoisyWeights,
    PrunedWeights,
    ScaledWeights,
    StochasticPrunedWeights,
    TestTimeDropout,
)
from robustact.defenses.posthoc import (
    DEFENSES,
    WEIGHT_LAYERS,
    DefenseSpec,
    applied_defenses,
    apply_defense,
    apply_sap,
    batch_shared_randomness,
    check_defense,
    defense_spec,
    list_defenses,
    register_defense,
    remove_defense,
    remove_sap,
)
from robustact.defenses.sap import (
    SAP,
    ReLUSAP,
    multinomial_counts,
    num_draws,
    sap,
    sap_draw_counts,
    sap_factor,
    sap_keep_probability,
)

__all__ = [
    "DEFENSES", "SAP", "WEIGHT_LAYERS", "DefendedActivation", "DefenseSpec", "GaussianNoise",
    "GaussianScaling", "NoisyWeights", "PrunedWeights", "ReLUSAP", "ScaledWeights",
    "StochasticPrunedWeights", "TestTimeDropout", "applied_defenses", "apply_defense",
    "apply_sap", "batch_shared_randomness", "check_defense", "defense_spec", "list_defenses",
    "multinomial_counts", "num_draws", "register_defense", "remove_defense", "remove_sap", "sap",
    "sap_draw_counts", "sap_factor", "sap_keep_probability",
]
