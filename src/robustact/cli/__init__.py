"""The ``robustact`` command: builds the parser from the command modules and dispatches.

Each module of this package adds its own subcommand(s) and runs them: it parses, calls the
library, prints. Only argparse is imported until a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from robustact.cli import attack, data, eval, listing, results, rl, run, train, weights
from robustact.cli.common import train_options
from robustact.errors import RobustactError

__all__ = ["COMMANDS", "build_parser", "main", "train_options"]

MAIN_EXAMPLE = """\
examples:
  robustact train --model small_cnn --dataset fashion_mnist --activation kwta --ratio 0.2 --epochs 3
  robustact eval --checkpoint runs/train
  robustact attack --checkpoint runs/train --attacks fgsm,pgd,deepfool --eps 0.1,0.2
  robustact list models
  robustact data fetch fashion_mnist
"""

COMMANDS = {"train": train.cmd_train, "lr-find": train.cmd_lr_find, "eval": eval.cmd_eval,
            "attack": attack.cmd_attack, "run": run.cmd_run, "results": results.cmd_results,
            "report": results.cmd_report, "list": listing.cmd_list, "data": data.cmd_data,
            "rl": rl.cmd_rl, "weights": weights.cmd_weights}


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, like every other error:
    ``error: robustact train: argument --epochs: invalid int value: 'three' (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, in the order ``robustact --help`` lists them."""
    parser = OneLineParser(
        prog="robustact", epilog=MAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Activation-function defenses (k-WTA, KAF, SAP) and their honest evaluation.",
    )
    from robustact import __version__

    parser.add_argument("--version", action="version", version=f"robustact {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_train_parser(sub)
    train.add_lr_find_parser(sub)
    eval.add_eval_parser(sub)
    attack.add_attack_parser(sub)
    rl.add_rl_parser(sub)
    run.add_run_parser(sub)
    results.add_results_parsers(sub)
    listing.add_list_parser(sub)
    data.add_data_parser(sub)
    weights.add_weights_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``robustact ARGV``; a library error or an I/O failure (a full disk, a read-only
    folder, a file where a folder belongs) prints one line and exits 2."""
    args = build_parser().parse_args(argv)
    from robustact.device import tune_cpu_allocator

    tune_cpu_allocator()  # CPU speed: freed tensor memory stays in the process
    try:
        return COMMANDS[args.command](args)
    except RobustactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        from robustact.files import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; a training run continues with the same command plus --resume",
              file=sys.stderr)
        return 130
