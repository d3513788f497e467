"""``robustact attack``: robust accuracy of a checkpoint under a suite and listed attacks."""

from __future__ import annotations

import argparse
from typing import Any

from robustact.cli.common import add_command, eps_list
from robustact.errors import ConfigError
from robustact.eval.record import EvalRecord
from robustact.report.robustness import robustness_table

ATTACK_EXAMPLE = """\
examples:
  # the adaptive suite (default), with the seed papers' attacks reported beside it
  robustact attack --checkpoint runs/kwta01 --attacks fgsm,pgd,deepfool --eps 0.1,0.2 --n 1000
  # AutoAttack's standard version, or its rand version for a randomized model
  robustact attack --checkpoint runs/kwta01 --suite autoattack --eps 0.1
  # only the attacks listed: options per attack, EOT for a randomized model, BPDA
  robustact attack --checkpoint runs/sap --suite none --attack pgd:steps=100,loss=margin,eot=32 \\
      --attack square:queries=5000 --eps 0.1 --samples 32
  robustact attack --checkpoint runs/kwta01 --suite none --attack pgd:steps=40,bpda=true \\
      --attack gradest --eps 0.1 --independent
"""


def add_attack_parser(sub: Any) -> None:
    """Add ``attack`` to the subparsers ``sub``."""
    p = add_command(sub, "attack", "robust accuracy under attacks, with masking diagnostics",
                    ATTACK_EXAMPLE)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--suite", default="adaptive",
                   help="preset suite run first, in sequence: adaptive (default: EOT, BPDA and "
                        "losses chosen for the model), autoattack, autoattack-rand, or none")
    p.add_argument("--attacks", default="", help="comma-separated paper-style attacks reported "
                   "beside the suite (robustact list attacks), e.g. fgsm,pgd,deepfool")
    p.add_argument("--attack", action="append", default=[], metavar="SPEC",
                   help="one attack with options, NAME:KEY=VALUE,... (repeatable); keys eot=N and "
                        "bpda=true wrap the model")
    p.add_argument("--eps", required=True, help="comma-separated eps on the [0, 1] scale")
    p.add_argument("--norm", choices=("linf", "l2"), help="norm for every attack (default linf)")
    p.add_argument("--n", type=int, default=1000, help="number of test examples (default 1000)")
    p.add_argument("--samples", type=int, default=None,
                   help="forward passes averaged per prediction (default: 1 for a deterministic "
                        "model, as many as a stable decision needs for a randomized one)")
    p.add_argument("--independent", action="store_true",
                   help="without a suite: run every attack on every clean-correct point "
                        "(default: each attack only on the points still robust)")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false")
    p.add_argument("--probe-size", type=int, default=200, help="examples used by diagnostics")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="result file stem (default: beside the checkpoint, "
                                 "robustness-<time>.json/.csv)")


def _suite_and_specs(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The suite (None for ``none``) and the attack specs of --attacks and --attack."""
    specs = [a for a in (n.strip() for n in args.attacks.split(",")) if a] + list(args.attack)
    suite = None if args.suite.strip().lower() == "none" else args.suite
    if not specs and suite is None:
        raise ConfigError("--suite none needs attacks: --attacks fgsm,pgd or --attack "
                          "pgd:steps=40")
    if suite is not None:
        from robustact.eval.suites import canonical_suite

        suite = canonical_suite(suite)
    return suite, specs


def cmd_attack(args: argparse.Namespace) -> int:
    """Attack the checkpoint, write the result files, print the tables."""
    import time
    from pathlib import Path

    from robustact.eval.checkpoint import attack_checkpoint, write_robustness
    from robustact.eval.config import EvalConfig

    suite, specs = _suite_and_specs(args)
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    config = EvalConfig.from_dict(
        {"eps": eps_list(args.eps), "n": args.n, "suite": suite or "none", "attacks": specs,
         "split": args.split, "norm": args.norm, "samples": args.samples,
         "independent": args.independent, "diagnose": args.diagnostics,
         "probe_size": args.probe_size}, "robustact attack")
    from tqdm.auto import tqdm

    bar = tqdm(unit="attack", disable=None)

    def progress(message: str) -> None:  # called as each attack starts
        bar.update(1)
        bar.set_description(message)

    record, report = attack_checkpoint(args.checkpoint, config, device=args.device,
                                       data_dir=args.data_dir, progress=progress)
    bar.close()
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    stem = Path(args.out) if args.out else run_dir / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
    write_robustness(record, report, stem)
    _print_report(record, report, suite, args.independent)
    print(f"results: {stem.with_suffix('.json')} and {stem.with_suffix('.csv')}")
    return 0


def _print_report(record: EvalRecord, report: Any, suite: str | None,
                  independent: bool) -> None:
    mode = (f"suite {suite}, then each listed attack on every point" if suite else
            "independent attacks" if independent else "sequential attacks")
    print(f"{record.model} / {record.activation} on {record.dataset} "
          f"({report.n} examples, {mode})")
    if report.suite is not None:
        print("\n".join(f"  {note}" for note in report.suite.notes))
    print(robustness_table(report))
    if report.diagnostics is not None:
        print(report.diagnostics.summary())
