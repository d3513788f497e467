"""``robustact attack``: robust accuracy of a checkpoint or any model under a suite and attacks.

The flags build one checked :class:`robustact.eval.config.EvalConfig`, as a study file's
``evaluate:`` block does; a bad value is one line naming its flag.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from robustact.cli.common import (
    add_command,
    add_defense_arguments,
    add_model_arguments,
    defense_flags,
    eps_list,
    model_source,
    naming_flags,
)
from robustact.errors import ConfigError

if TYPE_CHECKING:
    from robustact.eval.record import EvalRecord

ATTACK_EXAMPLE = """\
examples:
  # the adaptive suite (default), with the seed papers' attacks reported beside it
  robustact attack --checkpoint runs/kwta01 --attacks fgsm,pgd,deepfool --eps 0.1,0.2 --n 1000
  # AutoAttack's standard version, or its rand version for a randomized model
  robustact attack --checkpoint runs/kwta01 --suite autoattack --eps 0.1
  # only the attacks listed: options per attack, EOT for a randomized model, BPDA
  robustact attack --checkpoint runs/relu --sap 1.0 --suite none \\
      --attack pgd:steps=100,loss=margin,eot=32 \\
      --attack square:queries=5000 --eps 0.1 --samples 32
  robustact attack --checkpoint runs/kwta01 --suite none --attack pgd:steps=40,bpda=true \\
      --attack gradest --eps 0.1 --independent
  # a trained network with SAP-100 applied post hoc (or any defense: robustact list defenses)
  robustact attack --checkpoint runs/relu --sap 1.0 --eps 0.1
  robustact attack --checkpoint runs/relu --defense rnw:s=0.01 --eps 0.1
  # the points split over 4 GPUs (or CPU processes); the result does not depend on the count,
  # and a rerun after a failure resumes from the blocks already finished
  torchrun --nproc-per-node 4 -m robustact attack --checkpoint runs/kwta01 --eps 8/255
  # your own network: a function building it, its weights (state dict or .safetensors) and
  # the normalization it expects ([0, 1] images come in)
  robustact attack --model-factory mynets.cifar:resnet20 --model-arg width=16 \\
      --weights resnet20.safetensors --normalize cifar10 --dataset cifar10 --eps 8/255
  # a RobustBench-format checkpoint of a WideResNet-28-10
  robustact attack --model-factory wrn28_10 --weights Carmon2019Unlabeled.pt \\
      --dataset cifar10 --suite autoattack --eps 8/255
"""


def add_attack_parser(sub: Any) -> None:
    """Add ``attack`` to the subparsers ``sub``."""
    p = add_command(sub, "attack", "robust accuracy under attacks, with masking diagnostics",
                    ATTACK_EXAMPLE)
    add_model_arguments(p)
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
    p.add_argument("-n", "--n", type=int, default=1000,
                   help="number of test examples (default 1000; spell it -n under torchrun)")
    p.add_argument("--samples", type=int, default=None,
                   help="forward passes averaged per prediction (default: 1 for a deterministic "
                        "model, as many as a stable decision needs for a randomized one)")
    p.add_argument("--independent", action="store_true",
                   help="without a suite: run every attack on every clean-correct point "
                        "(default: each attack only on the points still robust)")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false")
    p.add_argument("--probe-size", type=int, default=200, help="examples used by diagnostics")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation's randomness "
                   "(each block of points is seeded from it and its place; default 0)")
    p.add_argument("--block", type=int, default=256,
                   help="points per block: the unit that is seeded, split over processes and "
                        "saved for resuming (default 256)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    add_defense_arguments(p)
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
    """Attack the checkpoint (split over the processes of a torchrun group), write the result
    files, print the tables."""
    from robustact.distributed import init_distributed

    source, config, defense = model_source(args), _config(args), defense_flags(args)
    ctx, device = init_distributed(args.device)
    try:
        return _attack(args, source, config, defense, str(device), ctx.is_main)
    finally:
        ctx.close()


def _config(args: argparse.Namespace) -> Any:
    from robustact.eval.config import EvalConfig

    suite, specs = _suite_and_specs(args)
    with naming_flags(ATTACK_FLAGS):
        return EvalConfig.from_dict(
            {"eps": eps_list(args.eps), "n": args.n, "suite": suite or "none",
             "attacks": specs, "split": args.split, "norm": args.norm, "samples": args.samples,
             "independent": args.independent, "diagnose": args.diagnostics,
             "probe_size": args.probe_size, "seed": args.seed, "block": args.block},
            "robustact attack")


#: the flag of each evaluation option (robustact.eval.config.EvalConfig)
ATTACK_FLAGS = {"robustact attack, " + key: flag for key, flag in {
    "eps": "--eps", "n": "--n", "samples": "--samples", "probe_size": "--probe-size",
    "seed": "--seed", "block": "--block", "norm": "--norm", "split": "--split"}.items()}


def _attack(args: argparse.Namespace, source: Any, config: Any,
            defense: dict[str, Any] | None, device: str, main: bool) -> int:
    """Evaluate (with ``defense`` applied post hoc); rank 0 alone writes and prints. Finished
    blocks are kept under the run's ``shards/`` until the result files are written."""
    import sys
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from robustact.distributed import current, stop_on_sigterm
    from robustact.eval.checkpoint import (
        attack_checkpoint,
        check_output,
        shard_dir,
        write_robustness,
    )

    run_dir = _result_dir(source)
    stem = Path(args.out) if args.out else run_dir / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
    if main:
        check_output(stem)  # a folder that cannot take the results: say so before attacking
    shards = shard_dir(run_dir / "shards", source, config, defense)
    if main and shards.saved():
        print(f"resuming: {len(shards.saved())} finished block(s) read back from {shards.path}",
              file=sys.stderr)
    stop_on_sigterm(current(), f"rerun the same command to resume from the finished blocks "
                               f"in {shards.path}")
    bar = tqdm(unit="attack", disable=None if main else True)

    def progress(message: str) -> None:  # called as each attack starts
        bar.update(1)
        bar.set_description(message)

    record, report = attack_checkpoint(source, config, device=device, data_dir=args.data_dir,
                                       defense=defense, progress=progress, shards=shards)
    bar.close()
    if not main:
        return 0
    write_robustness(record, report, stem)
    shards.remove()
    _print_report(record, report, config.suite, args.independent)
    print(f"results: {stem.with_suffix('.json')} and {stem.with_suffix('.csv')}")
    return 0


def _result_dir(source: Any) -> Any:
    """Where the results go by default: the run directory, or beside the user's weights (the
    working directory for a model without a weights file)."""
    from pathlib import Path

    if isinstance(source, str):
        path = Path(source)
        return path if path.is_dir() else path.parent
    return Path(source.weights).parent if source.weights else Path(".")


def _print_report(record: EvalRecord, report: Any, suite: str | None,
                  independent: bool) -> None:
    from robustact.report.robustness import robustness_table

    mode = (f"suite {suite}, then each listed attack on every point" if suite else
            "independent attacks" if independent else "sequential attacks")
    print(f"{record.model} / {record.activation} on {record.dataset} "
          f"({report.n} examples, {mode})")
    if report.suite is not None:
        print("\n".join(f"  {note}" for note in report.suite.notes))
    print(robustness_table(report))
    if report.diagnostics is not None:
        print(report.diagnostics.summary())
