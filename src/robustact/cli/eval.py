"""``robustact eval``: clean accuracy, loss and ECE of a checkpoint or any model, with a defense."""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustact.cli.common import (
    add_command,
    add_defense_arguments,
    add_model_arguments,
    defense_flags,
    model_source,
    naming_flags,
)

EVAL_EXAMPLE = """\
examples:
  robustact eval --checkpoint runs/kwta02
  robustact eval --checkpoint runs/kwta02/checkpoint.pt --n 1000 --device cpu
  # SAP-100 applied post hoc; predictions averaged over 100 passes; ECE reported too
  robustact eval --checkpoint runs/relu --sap 1.0 --samples 100
  # another post-hoc defense (robustact.defenses): test-time dropout
  robustact eval --checkpoint runs/relu --defense dro:p=0.3 --samples 50
  # your own network (robustact attack --help: the same flags)
  robustact eval --model-factory mynets.cifar:resnet20 --weights resnet20.pt \\
      --normalize cifar10 --dataset cifar10
"""


def add_eval_parser(sub: Any) -> None:
    """Add ``eval`` to the subparsers ``sub``."""
    p = add_command(sub, "eval", "clean accuracy of a checkpoint", EVAL_EXAMPLE)
    add_model_arguments(p)
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--n", type=int, help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    add_defense_arguments(p)
    p.add_argument("--samples", type=int, default=1,
                   help="average predictions over N forward passes (randomized models)")
    p.add_argument("--bins", type=int, default=15, help="calibration bins for the ECE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _defense(args: argparse.Namespace) -> dict[str, Any] | None:
    """The post-hoc defense asked for by --sap or --defense, if any (after checking the
    flags' values: :class:`robustact.eval.schema.CleanEvalSchema`)."""
    from robustact.eval.schema import CleanEvalSchema
    from robustact.options import check_schema

    keys = ("n", "batch_size", "samples", "bins", "sap")
    with naming_flags({key: "--" + key.replace("_", "-") for key in keys}):
        check_schema(CleanEvalSchema, {key: getattr(args, key) for key in keys})
    return defense_flags(args)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint and print one line (or one JSON object)."""
    from robustact.eval.calibration import nll, predict_proba, reliability
    from robustact.eval.checkpoint import load_evaluation_data, source_label

    source, defense = model_source(args), _defense(args)
    model, x, y = load_evaluation_data(source, args.n, split=args.split,
                                       device=args.device, data_dir=args.data_dir,
                                       defense=defense)
    probs = predict_proba(model, x, n_samples=args.samples, batch_size=args.batch_size)
    rel = reliability(probs, y, bins=args.bins)
    loss = float(nll(probs, y))
    result = {"n": rel.n, "accuracy": rel.accuracy, "loss": loss, "ece": rel.ece,
              "samples": args.samples, "defense": defense}
    if args.json:
        print(json.dumps({"checkpoint": source_label(source), "split": args.split, **result}))
    else:
        extra = f" with {defense['defense']}" if defense else ""
        avg = f", predictions averaged over {args.samples} passes" if args.samples > 1 else ""
        print(f"{source_label(source)}{extra} on {args.split} ({rel.n} images{avg}): accuracy "
              f"{100 * rel.accuracy:.2f}%, loss {loss:.4f}, ECE {100 * rel.ece:.2f}% "
              f"({args.bins} bins)")
    return 0
