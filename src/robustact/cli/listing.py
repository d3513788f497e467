"""``robustact list``: print the registered models, activations, datasets, attacks or suites."""

from __future__ import annotations

import argparse
from typing import Any

from robustact.cli.common import add_command


def add_list_parser(sub: Any) -> None:
    """Add ``list`` to the subparsers ``sub``."""
    p = add_command(sub, "list", "list the registered models, activations or datasets",
                    "examples:\n  robustact list activations\n")
    p.add_argument("what", choices=("models", "activations", "datasets", "attacks", "suites"))


def cmd_list(args: argparse.Namespace) -> int:
    """Print the names, one a line."""
    if args.what == "models":
        from robustact.models import list_models as names
    elif args.what == "attacks":
        from robustact.attacks import list_attacks as names
    elif args.what == "suites":
        from robustact.eval.suites import list_suites as names
    elif args.what == "activations":
        import robustact.defenses  # noqa: F401 - registers the "sap" activation
        from robustact.activations import list_activations as names
    else:
        from robustact.data import list_datasets as names
    print("\n".join(names()))
    return 0
