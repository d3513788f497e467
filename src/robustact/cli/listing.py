"""``robustact list``: print the registered models, activations, datasets, attacks, suites,
post hoc defenses, or the shipped study files."""

from __future__ import annotations

import argparse
from typing import Any

from robustact.cli.common import add_command


def add_list_parser(sub: Any) -> None:
    """Add ``list`` to the subparsers ``sub``."""
    p = add_command(sub, "list", "list the registered models, activations, datasets, attacks, "
                    "suites, post hoc defenses or shipped studies",
                    "examples:\n  robustact list activations\n  robustact list defenses\n"
                    "  robustact list studies      # robustact run NAME runs one\n")
    p.add_argument("what", choices=("models", "activations", "datasets", "attacks", "suites",
                                    "defenses", "studies"))


def cmd_list(args: argparse.Namespace) -> int:
    """Print the names, one a line (defenses: with their parameters and what they do)."""
    if args.what == "defenses":
        return _list_defenses()
    if args.what == "models":
        from robustact.models import list_models as names
    elif args.what == "attacks":
        from robustact.attacks import list_attacks as names
    elif args.what == "studies":
        from robustact.study.shipped import shipped_studies as names
    elif args.what == "suites":
        from robustact.eval.suites import list_suites as names
    elif args.what == "activations":
        import robustact.defenses  # noqa: F401 - registers the "sap" activation
        from robustact.activations import list_activations as names
    else:
        from robustact.data import list_datasets as names
    print("\n".join(names()))
    return 0


def _list_defenses() -> int:
    import inspect

    from robustact.defenses import defense_spec, list_defenses

    print(f"{'name':<6}{'acts on':<12}{'parameters':<30}what it does")
    for name in list_defenses():
        spec = defense_spec(name)
        signature = inspect.signature(spec.build).parameters
        params = ", ".join(p if signature[p].default is inspect.Parameter.empty
                           else f"{p}={signature[p].default}"
                           for p in spec.parameters() if p != "generator")
        print(f"{name:<6}{spec.site:<12}{params or '-':<30}{spec.summary}")
    return 0
