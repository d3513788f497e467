"""Activations: a registry from names to constructors, k-WTA, KAF, and ``convert_activations``.

Each activation registers itself where it is defined (``@ACTIVATIONS.register``); ``"sap"``
(ReLU followed by SAP) is registered by :mod:`robustact.defenses.sap`, so it is listed once
``robustact.defenses`` has been imported (``robustact.models`` does that).

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

__all__ = [
    "ACTIVATIONS", "KWTA", "ActLayer", "activation_types", "convert_activations",
    "count_activations", "create_act", "get_act_layer", "is_activation", "kwta", "kwta_ratios",
    "list_activations", "set_kwta_ratio",
    "KAF", "KAFELU", "KAFFree", "KAFReLU", "KAFSwish", "initialize_lazy",
]
