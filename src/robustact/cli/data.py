"""``robustact data``: find a dataset on disk or download it."""

from __future__ import annotations

import argparse
from typing import Any

from robustact.cli.common import add_command


def add_data_parser(sub: Any) -> None:
    """Add ``data`` to the subparsers ``sub``."""
    p = add_command(sub, "data", "find or download datasets",
                    "examples:\n  robustact data fetch fashion_mnist\n"
                    "  robustact data fetch cifar10 --data-dir ~/data\n")
    p.add_argument("action", choices=("fetch", "where"))
    p.add_argument("name", help="dataset name")
    p.add_argument("--data-dir")


def cmd_data(args: argparse.Namespace) -> int:
    """Print the dataset's directory (exit 1 when ``where`` finds none); ``fetch`` creates
    ``--data-dir`` if need be and reads every file through its format's checks before it says
    the dataset is there."""
    from pathlib import Path

    from robustact.data import fetch_dataset, find_dataset_dir, verify_dataset

    if args.action == "where":
        path = find_dataset_dir(args.name, args.data_dir)
        print(path if path else f"{args.name}: not found")
        return 0 if path else 1
    if args.data_dir:
        Path(args.data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    folder = fetch_dataset(args.name, data_dir=args.data_dir)
    verify_dataset(args.name, folder)
    print(folder)
    return 0
