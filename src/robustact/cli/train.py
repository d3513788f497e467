"""``robustact train`` and ``robustact lr-find``: their flags, and the two commands.

The flags and the ``--config`` file build one checked :class:`robustact.train.TrainConfig`
(:func:`robustact.cli.common.train_config`): a bad value is one line naming its flag.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from robustact.cli.common import (
    add_command,
    naming_flags,
    train_config,
    train_flags,
    train_options,
)

TRAIN_EXAMPLE = """\
examples:
  # k-WTA (20% winners) small CNN on Fashion-MNIST, 3 epochs
  robustact train --model small_cnn --dataset fashion_mnist --activation kwta --ratio 0.2 \\
      --epochs 3 --lr 0.05 --out runs/kwta02
  # incremental sparsity 0.2 -> 0.1 (minus 0.005 every 2 epochs), fine-tuning the run above
  robustact train --config configs/kwta02.yaml --finetune-from runs/kwta02 --sparsity-start 0.2 \\
      --sparsity-target 0.1 --lr 0.001 --out runs/kwta01
  # fine-tune torchvision ImageNet weights at 224x224 (the k-WTA reproduction's pretrained runs)
  robustact weights fetch resnet18-imagenet
  robustact train --model resnet18 --model-arg stem=imagenet --pretrained resnet18-imagenet \\
      --dataset cifar10 --resize 224 --epochs 10 --lr 0.01 --schedule constant --grad-clip 0.5
  # fast adversarial training (FGSM with random start, step 1.25 eps), cyclic learning rate
  robustact train --model small_cnn --dataset fashion_mnist --adv fgsm --adv-eps 0.1 \\
      --schedule cyclic --lr 0.1 --epochs 5 --out runs/fast_at
  # a killed run continues where it stopped
  robustact train --config configs/kwta02.yaml --out runs/kwta02 --resume
"""

LR_FIND_EXAMPLE = """\
examples:
  # the KAF thesis picked each activation's one-cycle bounds with this test (fast AT here)
  robustact lr-find --model small_cnn --dataset fashion_mnist --activation kaf \\
      --act-arg init_std=0.05 --adv fgsm --adv-eps 0.1 --out runs/lr_find/kaf
  robustact lr-find --config configs/kwta02.yaml --start-lr 1e-4 --end-lr 10 --steps 150
"""


def add_train_parser(sub: Any) -> None:
    """Add ``train``: the training flags, then where the run goes."""
    p = add_command(sub, "train", "train a model (checkpoint every epoch, resumable)",
                    TRAIN_EXAMPLE)
    run = _add_training_flags(p)
    run.add_argument("--out", help="output directory (checkpoint, metrics, config)")
    run.add_argument("--metrics-file", help="metrics file name, .jsonl or .csv")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")


def add_lr_find_parser(sub: Any) -> None:
    """Add ``lr-find``: the training flags, then the range test's own."""
    p = add_command(
        sub, "lr-find", "learning-rate range test: train with an exponentially growing lr, "
        "plot the loss", LR_FIND_EXAMPLE)
    run = _add_training_flags(p)
    run.add_argument("--out", help="where lr_find.json and lr_find.svg go (runs/lr_find)")
    p.set_defaults(metrics_file=None)
    rt = p.add_argument_group("range test")
    rt.add_argument("--start-lr", type=float, default=1e-5, help="first lr (default 1e-5)")
    rt.add_argument("--end-lr", type=float, default=1.0, help="last lr (default 1)")
    rt.add_argument("--steps", type=int, default=100, help="batches (default 100)")
    rt.add_argument("--beta", type=float, default=0.9,
                    help="smoothing of the loss curve (moving average, default 0.9)")
    rt.add_argument("--diverge", type=float, default=4.0,
                    help="stop when the smoothed loss exceeds this factor times its minimum")


def _add_training_flags(p: argparse.ArgumentParser) -> Any:
    """The flags ``train`` and ``lr-find`` share; returns the "run" group for the rest."""
    p.add_argument("--config", help="YAML file of training options; flags override it")
    _add_what(p.add_argument_group("what to train"))
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", help="where datasets live (default $ROBUSTACT_DATA, cache)")
    data.add_argument("--batch-size", type=int)
    data.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    data.add_argument("--resize", type=int, help="resize images, e.g. 224 for ImageNet networks")
    data.add_argument("--train-subset", type=int, help="use the first N training images")
    data.add_argument("--test-subset", type=int, help="use the first N test images")
    _add_optimisation(p.add_argument_group("optimisation"))
    sp = p.add_argument_group("incremental k-WTA sparsity")
    sp.add_argument("--sparsity-start", type=float, help="ratio at the start, e.g. 0.2")
    sp.add_argument("--sparsity-target", type=float, help="final ratio, e.g. 0.1")
    sp.add_argument("--sparsity-step", type=float, help="decrement, e.g. 0.005")
    sp.add_argument("--sparsity-every", type=int, help="epochs between decrements, e.g. 2")
    sp.add_argument("--sparsity-begin", type=int, help="epoch at which the decrease starts")
    _add_adversarial(p.add_argument_group("adversarial training"))
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    run.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    return run


def _add_what(what: Any) -> None:
    what.add_argument("--model", help="network name (robustact list models)")
    what.add_argument("--dataset", help="dataset name (robustact list datasets)")
    what.add_argument("--activation", help="activation name (robustact list activations)")
    what.add_argument("--ratio", type=float, help="k-WTA sparsity ratio in (0, 1]")
    what.add_argument("--k", type=int, help="k-WTA fixed number of winners (instead of --ratio)")
    what.add_argument("--kwta-mode", choices=("volume", "channel"), help="k-WTA selection unit")
    what.add_argument("--act-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="extra activation argument (repeatable), e.g. --act-arg alpha=0.5")
    what.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="extra model argument (repeatable), e.g. --model-arg stem=imagenet")
    what.add_argument("--pretrained", help="torchvision-format weights file (resnet18, alexnet)")
    what.add_argument("--finetune-from", help="start from the weights of a robustact checkpoint")


def _add_optimisation(opt: Any) -> None:
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--optimizer", choices=("sgd", "adam"))
    opt.add_argument("--lr", type=float, help="peak learning rate")
    opt.add_argument("--momentum", type=float)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--schedule",
                     choices=("constant", "step", "multistep", "cosine", "onecycle", "cyclic"),
                     help="cyclic = onecycle (linear up to peak_at, then down to 0)")
    opt.add_argument("--milestones", help="multistep epochs, comma-separated, e.g. 50,70")
    opt.add_argument("--gamma", type=float, help="lr factor of step/multistep schedules")
    opt.add_argument("--step-size", type=int, help="epochs between steps of the step schedule")
    opt.add_argument("--warmup-epochs", type=float)
    opt.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    opt.add_argument("--amp", action=argparse.BooleanOptionalAction,
                     help="mixed precision (default: on for CUDA)")


def _add_adversarial(at: Any) -> None:
    at.add_argument("--adv", choices=("fgsm", "pgd"),
                    help="fgsm: fast AT (random start, step 1.25 eps); pgd: Madry PGD-AT")
    at.add_argument("--adv-eps", type=float, help="radius on the [0, 1] scale, e.g. 0.1")
    at.add_argument("--adv-steps", type=int, help="PGD-AT iterations (default 7)")
    at.add_argument("--adv-step-size", type=float,
                    help="step (default 1.25 eps for fgsm, 2.5 eps / steps for pgd)")
    at.add_argument("--adv-fraction", type=float,
                    help="adversarial share of each batch, e.g. 0.2 (default 1.0)")
    at.add_argument("--no-guard", dest="adv_guard", action="store_const", const=False,
                    help="no catastrophic-overfitting guard")


def cmd_train(args: argparse.Namespace) -> int:
    """Train, then print the test accuracy and where the checkpoint is (rank 0 only)."""
    from robustact.train import train

    config = train_config(args)
    result = train(config, resume=args.resume)
    final = result.history[-1]
    kept = f" (weights of epoch {final['kept_epoch']})" if "kept_epoch" in final else ""
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(f"test accuracy {100 * result.test_accuracy:.2f}%{kept} after {final['epoch']} epochs; "
          f"checkpoint {result.checkpoint}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Run the learning-rate range test, write its curve, print its table."""
    from robustact.report.figures import range_test_table, write_lr_find_figure
    from robustact.train import TrainConfig
    from robustact.train.lr_find import lr_range_test, write_range_test

    options = train_options(args)
    out = options.pop("out", None) or "runs/lr_find"
    with naming_flags(train_flags(args), args.config):
        config = TrainConfig.from_dict(options)
    result = lr_range_test(config, start=args.start_lr, end=args.end_lr, steps=args.steps,
                           beta=args.beta, diverge=args.diverge)
    path = write_range_test(result, config, out)
    write_lr_find_figure(out, result, config)
    print(range_test_table(result))
    print(f"curve: {path} and {path.with_suffix('.svg')}")
    return 0
