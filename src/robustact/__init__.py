"""robustact: activation-function defenses against adversarial examples, evaluated honestly.

The package is a stack of layers, each importing only from the ones below it::

    errors, registry, device, files, options      plumbing
    data | activations | attacks                  datasets, k-WTA/KAF, attacks on any model
    defenses -> models -> eval -> train -> rl     post-hoc defenses, networks, evaluation, training
    results -> report -> study -> cli             the store, its renderings, studies, commands

Stores store, reports render, the command line composes; see docs/architecture.md. Import
what you need from the subpackages, e.g. ``from robustact.models import create_model``.
"""

__version__ = "0.1.0"
