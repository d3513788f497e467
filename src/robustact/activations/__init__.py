"""Activations: a registry from names to constructors, k-WTA, and ``convert_activations``.

    >>> from robustact.activations import create_act, convert_activations
    >>> create_act("kwta", ratio=0.1)
    KWTA(ratio=0.1, mode=volume, rounding=floor)
"""

from robustact.activations.convert import (
    activation_types,
    convert_activations,
    count_activations,
    is_activation,
)
from robustact.activations.kaf import (
    KAF,
    KAFELU,
    KAFFree,
    KAFReLU,
    KAFSwish,
    initialize_lazy,
)
from robustact.activations.kwta import KWTA, kwta, kwta_ratios, set_kwta_ratio
from robustact.activations.registry import (
    ACTIVATIONS,
    ActLayer,
    create_act,
    get_act_layer,
    list_activations,
)

ACTIVATIONS.add("kwta", KWTA, aliases=("k_wta", "kwinners"))
ACTIVATIONS.add("kaf", KAF)
ACTIVATIONS.add("kaf_relu", KAFReLU)
ACTIVATIONS.add("kaf_elu", KAFELU)
ACTIVATIONS.add("kaf_swish", KAFSwish, aliases=("kaf_silu",))
ACTIVATIONS.add("kaf_free", KAFFree)

# ReLU followed by SAP, for models built with SAP from the start (``apply_sap`` inserts SAP
# into a trained network instead). The bare SAP layer is not registered: it would count as an
# activation, and convert_activations would replace it.
from robustact.defenses.sap import ReLUSAP  # noqa: E402

ACTIVATIONS.add("sap", ReLUSAP, aliases=("relu_sap",))

__all__ = [
    "ACTIVATIONS", "KWTA", "ActLayer", "activation_types", "convert_activations",
    "count_activations", "create_act", "get_act_layer", "is_activation", "kwta", "kwta_ratios",
    "list_activations", "set_kwta_ratio",
    "KAF", "KAFELU", "KAFFree", "KAFReLU", "KAFSwish", "initialize_lazy",
]
