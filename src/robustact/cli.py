"""The ``robustact`` command: a thin face over the library; it holds no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from robustact.errors import ConfigError, RobustactError

MAIN_EXAMPLE = """\
examples:
  robustact train --model small_cnn --dataset fashion_mnist --activation kwta --ratio 0.2 --epochs 3
  robustact eval --checkpoint runs/train
  robustact attack --checkpoint runs/train --attacks fgsm,pgd,deepfool --eps 0.1,0.2
  robustact list models
  robustact data fetch fashion_mnist
"""

TRAIN_EXAMPLE = """\
examples:
  # k-WTA (20% winners) small CNN on Fashion-MNIST, 3 epochs
  robustact train --model small_cnn --dataset fashion_mnist --activation kwta --ratio 0.2 \\
      --epochs 3 --lr 0.05 --out runs/kwta02
  # incremental sparsity 0.2 -> 0.1 (minus 0.005 every 2 epochs), fine-tuning the run above
  robustact train --config configs/kwta02.yaml --finetune-from runs/kwta02 --sparsity-start 0.2 \\
      --sparsity-target 0.1 --lr 0.001 --out runs/kwta01
  # fine-tune torchvision ImageNet weights at 224x224 (the k-WTA reproduction's pretrained runs)
  robustact train --model resnet18 --model-arg stem=imagenet --pretrained resnet18.pth \
      --dataset cifar10 --resize 224 --epochs 10 --lr 0.01 --schedule constant --grad-clip 0.5
  # fast adversarial training (FGSM with random start, step 1.25 eps), cyclic learning rate
  robustact train --model small_cnn --dataset fashion_mnist --adv fgsm --adv-eps 0.1 \
      --schedule cyclic --lr 0.1 --epochs 5 --out runs/fast_at
  # a killed run continues where it stopped
  robustact train --config configs/kwta02.yaml --out runs/kwta02 --resume
"""

EVAL_EXAMPLE = """\
examples:
  robustact eval --checkpoint runs/kwta02
  robustact eval --checkpoint runs/kwta02/checkpoint.pt --n 1000 --device cpu
  # SAP-100 applied post hoc; predictions averaged over 100 passes; ECE reported too
  robustact eval --checkpoint runs/relu --sap 1.0 --samples 100
  # another post-hoc defense (robustact.defenses): test-time dropout
  robustact eval --checkpoint runs/relu --defense dro:p=0.3 --samples 50
"""


LR_FIND_EXAMPLE = """\
examples:
  # the KAF thesis picked each activation's one-cycle bounds with this test (fast AT here)
  robustact lr-find --model small_cnn --dataset fashion_mnist --activation kaf \\
      --act-arg init_std=0.05 --adv fgsm --adv-eps 0.1 --out runs/lr_find/kaf
  robustact lr-find --config configs/kwta02.yaml --start-lr 1e-4 --end-lr 10 --steps 150
"""


def _add_train_parser(sub: Any, command: str = "train") -> Any:
    if command == "train":
        p = sub.add_parser("train", help="train a model (checkpoint every epoch, resumable)",
                           epilog=TRAIN_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        p = sub.add_parser(
            command, epilog=LR_FIND_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
            help="learning-rate range test: train with an exponentially growing lr, plot the loss")
    p.add_argument("--config", help="YAML file of training options; flags override it")
    what = p.add_argument_group("what to train")
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
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", help="where datasets live (default $ROBUSTACT_DATA, cache)")
    data.add_argument("--batch-size", type=int)
    data.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    data.add_argument("--resize", type=int, help="resize images, e.g. 224 for ImageNet networks")
    data.add_argument("--train-subset", type=int, help="use the first N training images")
    data.add_argument("--test-subset", type=int, help="use the first N test images")
    opt = p.add_argument_group("optimisation")
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
    sp = p.add_argument_group("incremental k-WTA sparsity")
    sp.add_argument("--sparsity-start", type=float, help="ratio at the start, e.g. 0.2")
    sp.add_argument("--sparsity-target", type=float, help="final ratio, e.g. 0.1")
    sp.add_argument("--sparsity-step", type=float, help="decrement, e.g. 0.005")
    sp.add_argument("--sparsity-every", type=int, help="epochs between decrements, e.g. 2")
    sp.add_argument("--sparsity-begin", type=int, help="epoch at which the decrease starts")
    at = p.add_argument_group("adversarial training")
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
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    run.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    if command == "train":
        run.add_argument("--out", help="output directory (checkpoint, metrics, config)")
        run.add_argument("--metrics-file", help="metrics file name, .jsonl or .csv")
        run.add_argument("--resume", action="store_true", help="continue the run in --out")
        return p
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
    return p


def _add_eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="clean accuracy of a checkpoint", epilog=EVAL_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--n", type=int, help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--sap", type=float, metavar="FRAC",
                   help="apply SAP post hoc (1.0 = SAP-100) before evaluating")
    p.add_argument("--defense", metavar="SPEC",
                   help="apply a post-hoc defense, e.g. dro:p=0.3 or rnw:s=0.01")
    p.add_argument("--samples", type=int, default=1,
                   help="average predictions over N forward passes (randomized models)")
    p.add_argument("--bins", type=int, default=15, help="calibration bins for the ECE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def parse_defense(spec: str) -> dict[str, Any]:
    """``"dro:p=0.3"`` -> ``{"defense": "dro", "p": 0.3}``."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise ConfigError(f"--defense expects NAME[:key=value,...], got {spec!r}")
    items = [i for i in rest.split(",") if i.strip()]
    return {"defense": name.strip(), **_key_values(items, "--defense")}


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


def _add_attack_parser(sub: Any) -> None:
    p = sub.add_parser("attack", help="robust accuracy under attacks, with masking diagnostics",
                       epilog=ATTACK_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustact", epilog=MAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Activation-function defenses (k-WTA, KAF, SAP) and their honest evaluation.",
    )
    from robustact import __version__

    parser.add_argument("--version", action="version", version=f"robustact {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_train_parser(sub, "lr-find")
    _add_eval_parser(sub)
    _add_attack_parser(sub)
    from robustact.rl.cli import add_rl_parser  # argparse only; torch loads when it runs

    add_rl_parser(sub)
    run = sub.add_parser("run", help="run a study: train and evaluate every cell, tabulate",
                         epilog="examples:\n  robustact run configs/kaf_fmnist.yaml\n"
                                "  robustact run configs/kaf_fmnist.yaml --cell kaf_relu\n"
                                "  robustact run configs/kaf_fmnist.yaml --list\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("study", help="study YAML file (see docs/studies.md)")
    run.add_argument("--cell", action="append", default=[], metavar="ID",
                     help="run only this cell (repeatable); for cluster job arrays")
    run.add_argument("--out", help="study directory (default: the file's out, or runs/NAME)")
    run.add_argument("--list", action="store_true", help="list the cells and their status")
    run.add_argument("--jobs", type=int, default=1,
                     help="cells in parallel processes (one per GPU when there are GPUs)")
    res = sub.add_parser("results", help="list, show or export a study's stored results",
                         epilog="examples:\n  robustact results list configs/demo.yaml\n"
                                "  robustact results show runs/demo relu\n"
                                "  robustact results export runs/demo --format markdown\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    res.add_argument("action", choices=("list", "show", "export"))
    res.add_argument("study", help="study YAML file, study directory or results.sqlite file")
    res.add_argument("cell", nargs="?", help="cell id (show)")
    res.add_argument("--format", default="markdown", choices=("csv", "json", "markdown"))
    rep_ = sub.add_parser("report", help="write report.md and report.html from stored results",
                          epilog="examples:\n  robustact report configs/demo.yaml\n"
                                 "  robustact report runs/demo --out /tmp/report\n",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    rep_.add_argument("study", help="study YAML file, study directory or results.sqlite file")
    rep_.add_argument("--out", help="report directory (default: <study dir>/report)")
    lst = sub.add_parser("list", help="list the registered models, activations or datasets",
                         epilog="examples:\n  robustact list activations\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    lst.add_argument("what", choices=("models", "activations", "datasets", "attacks", "suites"))
    data = sub.add_parser("data", help="find or download datasets",
                          epilog="examples:\n  robustact data fetch fashion_mnist\n"
                                 "  robustact data fetch cifar10 --data-dir ~/data\n",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_argument("action", choices=("fetch", "where"))
    data.add_argument("name", help="dataset name")
    data.add_argument("--data-dir")
    return parser


def _key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``["ratio=0.1", "mode=channel"]`` -> ``{"ratio": 0.1, "mode": "channel"}`` (YAML values)."""
    import yaml

    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the config file (if any) and the explicit flags; flags win."""
    from robustact.options import load_config_file

    options: dict[str, Any] = load_config_file(args.config) if args.config else {}
    file_activation = options.get("activation")
    direct = ("model", "dataset", "activation", "pretrained", "finetune_from", "data_dir",
              "batch_size", "augment", "resize", "train_subset", "test_subset", "epochs",
              "optimizer", "lr", "momentum", "weight_decay", "schedule", "gamma", "step_size",
              "warmup_epochs", "grad_clip", "amp", "seed", "device", "out", "metrics_file",
              "progress")
    for name in direct:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.milestones is not None:
        try:
            options["milestones"] = [int(m) for m in args.milestones.split(",") if m.strip()]
        except ValueError:
            raise ConfigError(
                f"--milestones must be comma-separated epochs, got {args.milestones!r}"
            ) from None
    act_kwargs = dict(options.get("act_kwargs") or {})
    if args.activation is not None and args.activation != file_activation:
        act_kwargs = {}  # the file's activation arguments belong to the activation it named
    for flag, key in (("ratio", "ratio"), ("k", "k"), ("kwta_mode", "mode")):
        if getattr(args, flag) is not None:
            act_kwargs[key] = getattr(args, flag)
    act_kwargs.update(_key_values(args.act_arg, "--act-arg"))
    if args.model_arg:
        options["model_kwargs"] = {**(options.get("model_kwargs") or {}),
                                   **_key_values(args.model_arg, "--model-arg")}
    if args.k is not None and args.ratio is None:
        act_kwargs["ratio"] = None
    options["act_kwargs"] = act_kwargs
    sparsity = dict(options.get("sparsity") or {})
    for flag in ("start", "target", "step", "every", "begin"):
        value = getattr(args, f"sparsity_{flag}")
        if value is not None:
            sparsity["begin_epoch" if flag == "begin" else flag] = value
    if sparsity:
        options["sparsity"] = sparsity
    adversarial = dict(options.get("adversarial") or {})
    for flag, key in (("adv", "method"), ("adv_eps", "eps"), ("adv_steps", "steps"),
                      ("adv_step_size", "step_size"), ("adv_fraction", "fraction"),
                      ("adv_guard", "guard")):
        if getattr(args, flag) is not None:
            adversarial[key] = getattr(args, flag)
    if adversarial:
        options["adversarial"] = adversarial
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from robustact.train import TrainConfig, train

    config = TrainConfig.from_dict(train_options(args))
    result = train(config, resume=args.resume)
    final = result.history[-1]
    kept = f" (weights of epoch {final['kept_epoch']})" if "kept_epoch" in final else ""
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(f"test accuracy {100 * result.test_accuracy:.2f}%{kept} after {final['epoch']} epochs; "
          f"checkpoint {result.checkpoint}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from robustact.train import TrainConfig
    from robustact.train.lr_find import lr_range_test, write_range_test

    options = train_options(args)
    out = options.pop("out", None) or "runs/lr_find"
    config = TrainConfig.from_dict(options)
    result = lr_range_test(config, start=args.start_lr, end=args.end_lr, steps=args.steps,
                           beta=args.beta, diverge=args.diverge)
    path = write_range_test(result, config, out)
    print(result.table())
    print(f"curve: {path} and {path.with_suffix('.svg')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from robustact.eval.calibration import predict_proba, reliability
    from robustact.eval.checkpoint import load_evaluation_data

    if args.sap is not None and args.defense:
        raise ConfigError("give --sap or --defense, not both")
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    defense = parse_defense(args.defense) if args.defense else None
    if args.sap is not None:
        defense = {"defense": "sap", "frac": args.sap}
    model, x, y = load_evaluation_data(args.checkpoint, args.n, split=args.split,
                                       device=args.device, data_dir=args.data_dir,
                                       defense=defense)
    probs = predict_proba(model, x, n_samples=args.samples, batch_size=args.batch_size)
    rel = reliability(probs, y, bins=args.bins)
    loss = float(torch_nll(probs, y))
    result = {"n": rel.n, "accuracy": rel.accuracy, "loss": loss, "ece": rel.ece,
              "samples": args.samples, "defense": defense}
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, **result}))
    else:
        extra = f" with {defense['defense']}" if defense else ""
        avg = f", predictions averaged over {args.samples} passes" if args.samples > 1 else ""
        print(f"{args.checkpoint}{extra} on {args.split} ({rel.n} images{avg}): accuracy "
              f"{100 * rel.accuracy:.2f}%, loss {loss:.4f}, ECE {100 * rel.ece:.2f}% "
              f"({args.bins} bins)")
    return 0


def torch_nll(probs: Any, y: Any) -> float:
    """Mean negative log-likelihood of the (averaged) probabilities."""
    import torch

    return -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).mean().item()


def _eps_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--eps must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError("--eps needs at least one value, e.g. --eps 0.1")
    return values


def cmd_attack(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from robustact.eval.checkpoint import attack_checkpoint, write_robustness

    specs = [a for a in (n.strip() for n in args.attacks.split(",")) if a] + list(args.attack)
    suite = None if args.suite.strip().lower() == "none" else args.suite
    if not specs and suite is None:
        raise ConfigError("--suite none needs attacks: --attacks fgsm,pgd or --attack "
                          "pgd:steps=40")
    if suite is not None:
        from robustact.eval.suites import canonical_suite

        suite = canonical_suite(suite)
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    eps_list = _eps_list(args.eps)
    from tqdm.auto import tqdm

    bar = tqdm(unit="attack", disable=None)

    def progress(message: str) -> None:  # called as each attack starts
        bar.update(1)
        bar.set_description(message)

    record, report = attack_checkpoint(
        args.checkpoint, specs, eps_list, args.n, suite=suite, split=args.split, norm=args.norm,
        n_samples=args.samples, sequential=not args.independent, diagnose=args.diagnostics,
        probe_size=args.probe_size, device=args.device, data_dir=args.data_dir,
        progress=progress)
    bar.close()
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    stem = Path(args.out) if args.out else run_dir / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
    write_robustness(record, report, stem)
    mode = (f"suite {suite}, then each listed attack on every point" if suite else
            "independent attacks" if args.independent else "sequential attacks")
    print(f"{record['model']} / {record['activation']} on {record['dataset']} "
          f"({report.n} examples, {mode})")
    if report.suite is not None:
        print("\n".join(f"  {note}" for note in report.suite.notes))
    print(report.table())
    if report.diagnostics is not None:
        print(report.diagnostics.summary())
    print(f"results: {stem.with_suffix('.json')} and {stem.with_suffix('.csv')}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from robustact.study import load_study, run_study
    from robustact.study.runner import collect_results

    study = load_study(args.study, out=args.out)
    if args.list:
        for row in collect_results(study):
            why = f" ({row['error']})" if row["status"] == "stale" else ""
            print(f"{row['cell']:<24}{row['status'] or 'not run'}{why}")
        return 0
    results = run_study(study, cells=args.cell or None, jobs=args.jobs)
    print((study.out / "results.md").read_text())
    failed = [r.id for r in results if r.status != "done"]
    if failed:
        print(f"failed cells: {', '.join(failed)} (see their error.log)", file=sys.stderr)
        return 1
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from robustact.study.stores import open_study_store

    store, name, _ = open_study_store(args.study)
    if args.action == "list":
        for run in store.runs(name):
            print(f"{run['cell']:<24}{run['status']:<9}{run.get('device') or '':<8}"
                  f"{run.get('finished') or run.get('started') or ''}")
    elif args.action == "show":
        if not args.cell:
            raise ConfigError("results show needs a cell id: robustact results show STUDY CELL")
        run = store.run(name, args.cell)
        if run is None:
            raise ConfigError(f"no cell {args.cell!r} in study {name}")
        print(json.dumps({"run": run, "results": store.results(run_id=run["id"]),
                          "diagnostics": store.diagnostics(run["id"])}, indent=1, default=str))
    else:
        print(store.export(name, args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustact.report import write_report
    from robustact.study.stores import open_study_store

    store, name, root = open_study_store(args.study)
    md, html = write_report(store, name, Path(args.out) if args.out else root / "report")
    print(f"report: {html}\n        {md}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from robustact.models import list_models as names
    elif args.what == "attacks":
        from robustact.attacks import list_attacks as names
    elif args.what == "suites":
        from robustact.eval.suites import list_suites as names
    elif args.what == "activations":
        from robustact.activations import list_activations as names
    else:
        from robustact.data import list_datasets as names
    print("\n".join(names()))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from robustact.data import fetch_dataset, find_dataset_dir

    if args.action == "where":
        path = find_dataset_dir(args.name, args.data_dir)
        print(path if path else f"{args.name}: not found")
        return 0 if path else 1
    print(fetch_dataset(args.name, data_dir=args.data_dir))
    return 0


def cmd_rl(args: argparse.Namespace) -> int:
    from robustact.rl.cli import cmd_rl as run_rl

    return run_rl(args)


COMMANDS = {"train": cmd_train, "lr-find": cmd_lr_find, "eval": cmd_eval, "attack": cmd_attack,
            "run": cmd_run, "results": cmd_results, "report": cmd_report, "list": cmd_list,
            "data": cmd_data, "rl": cmd_rl}


def main(argv: Sequence[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        print("\ninterrupted; a training run continues with the same command plus --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
