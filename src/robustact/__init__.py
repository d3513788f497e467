"""robustact: activation-function defenses against adversarial examples, evaluated honestly.

The package is organised one room per concept, data flowing one way::

    data -> models (+ activations) -> train -> attacks -> eval

Import what you need from the subpackages, e.g. ``from robustact.models import create_model``.
"""

__version__ = "0.1.0"
