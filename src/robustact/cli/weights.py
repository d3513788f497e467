"""``robustact weights``: list the published pre-trained weights, fetch them into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustact.cli.common import add_command

WEIGHTS_EXAMPLE = ("examples:\n  robustact weights list\n"
                   "  robustact weights fetch resnet18-imagenet\n"
                   "  robustact weights fetch alexnet-imagenet --dir ~/weights\n"
                   "  # then, in a config: train: {..., pretrained: resnet18-imagenet}\n")


def add_weights_parser(sub: Any) -> None:
    """Add ``weights`` to the subparsers ``sub``."""
    p = add_command(sub, "weights", "list or fetch published pre-trained weights",
                    WEIGHTS_EXAMPLE)
    p.add_argument("action", choices=("list", "fetch", "where"))
    p.add_argument("name", nargs="?", help="published weights (robustact weights list)")
    p.add_argument("--dir", help="cache directory (default: $ROBUSTACT_WEIGHTS or "
                                 "~/.cache/robustact/weights)")
    p.add_argument("--url", help="download from this mirror instead of the official URL "
                                 "(the published SHA-256 is checked all the same)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_weights(args: argparse.Namespace) -> int:
    """``list``: name, model, cached or not; ``fetch``: download and print the path;
    ``where``: the cached file (exit 1 when it is not there)."""
    from robustact.errors import ConfigError
    from robustact.models.weights import WEIGHTS, fetch_weights, published, weights_cache

    directory = Path(args.dir).expanduser() if args.dir else weights_cache()
    if args.action == "list":
        for name, entry in WEIGHTS.items():
            state = "cached" if (directory / entry.filename).is_file() else "not fetched"
            print(f"{name:<20}{entry.model:<10}{state:<13}{entry.summary}")
        return 0
    if not args.name:
        raise ConfigError(f"robustact weights {args.action} needs a name: "
                          f"{', '.join(WEIGHTS)}")
    if args.action == "where":
        path = directory / published(args.name).filename
        print(path if path.is_file() else f"{args.name}: not fetched")
        return 0 if path.is_file() else 1
    print(fetch_weights(args.name, directory=directory, url=args.url,
                        progress=not args.no_progress))
    return 0
