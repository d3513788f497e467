"""Helpers the command modules share: flag values turned into library options, repeated flags.

Flag values are checked by the same typed configurations a YAML file builds (training,
evaluation, RL evaluation); :func:`naming_flags` turns a bad value's error into one line that
names the flag (``--train-subset must be >= 1, got 0; ...``) or the config file and key.
Only argparse, yaml (when a helper runs) and :mod:`robustact.errors` are imported here, so that
building the parser stays cheap; the library loads when a command runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from robustact.errors import ConfigError


def add_command(sub: Any, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` to the subparsers ``sub``; its epilog keeps its line breaks."""
    return sub.add_parser(name, help=help, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_study_arguments(p: argparse.ArgumentParser, study_help: str, cell_help: str,
                        out_help: str) -> None:
    """The arguments every study runner takes: the study file, --cell, --out and --list."""
    p.add_argument("study", help=study_help)
    p.add_argument("--cell", action="append", default=[], metavar="ID", help=cell_help)
    p.add_argument("--out", help=out_help)
    p.add_argument("--list", action="store_true", help="list the cells and their status")


def add_store_argument(p: argparse.ArgumentParser) -> None:
    """``--store URL``: the results store, when it is not the study directory's results.sqlite."""
    p.add_argument("--store", metavar="URL",
                   help="results store: a path, sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/DATABASE for writers on many hosts "
                        "(default: <study dir>/results.sqlite; see docs/store.md)")


def report_failed(failed: list[str]) -> int:
    """Exit status of a study run: 1 (and the cells named on stderr) when some cells failed."""
    if failed:
        print(f"failed cells: {', '.join(failed)} (see their error.log)", file=sys.stderr)
        return 1
    return 0


def copy_given(args: argparse.Namespace, flags: Iterable[str | tuple[str, str]],
               into: dict[str, Any]) -> dict[str, Any]:
    """Copy each flag that was given (not None) into ``into``; a ``(flag, key)`` pair renames."""
    for flag in flags:
        name, key = flag if isinstance(flag, tuple) else (flag, flag)
        value = getattr(args, name)
        if value is not None:
            into[key] = value
    return into


def flag_name(dest: str) -> str:
    """The flag of an argparse destination: ``train_subset`` -> ``--train-subset``."""
    return "--" + dest.replace("_", "-")


def given_flags(args: argparse.Namespace, flags: Iterable[str | tuple[str, str]],
                prefix: str = "") -> dict[str, str]:
    """``{option key: flag}`` for each flag of ``flags`` that was given (not None); a
    ``(dest, key)`` pair renames, ``prefix`` names a section (``adversarial.``)."""
    names: dict[str, str] = {}
    for flag in flags:
        dest, key = flag if isinstance(flag, tuple) else (flag, flag)
        if getattr(args, dest, None) is not None:
            names[prefix + key] = flag_name(dest)
    return names


@contextmanager
def naming_flags(flags: dict[str, str], config: str | None = None) -> Iterator[None]:
    """Inside, a bad option value (:class:`robustact.options.OptionError`) is re-raised naming
    the flag that gave it (``flags``: option key -> flag), or else the ``config`` file."""
    from robustact.options import OptionError, within

    try:
        yield
    except OptionError as exc:
        if exc.key in flags:
            raise exc.as_flag(flags[exc.key]) from None
        if config:
            raise within(str(config), exc) from None
        raise


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``["ratio=0.1", "mode=channel"]`` -> ``{"ratio": 0.1, "mode": "channel"}`` (YAML values)."""
    import yaml

    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint, or a user's model: --model-factory, --model-arg, --weights, --normalize,
    --dataset and --resize (robustact.models.external)."""
    p.add_argument("--checkpoint", help="robustact checkpoint file or run directory")
    g = p.add_argument_group("any model (instead of --checkpoint)")
    g.add_argument("--model-factory", metavar="PKG.MOD:FN",
                   help="a function returning the model (it takes [0, 1] images), or a "
                        "registered model (robustact list models; wrn28_10, wrn34_10 and "
                        "preact_resnet18 read RobustBench files)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the factory (repeatable; values read as YAML)")
    g.add_argument("--weights", metavar="FILE",
                   help="the model's weights: a state dict (.pt/.pth, read without running "
                        "code) or .safetensors")
    g.add_argument("--normalize", metavar="MEAN,STD",
                   help="the model expects normalized inputs: MEAN,STD (one each, or C means "
                        "then C stds), a dataset's name (cifar10) or imagenet")
    g.add_argument("--dataset", help="the dataset the model was trained on (its test images "
                                     "are evaluated)")
    g.add_argument("--resize", type=int, metavar="PX", help="resize images to PX x PX first")


#: the flags that describe a user's model besides --model-factory (never with --checkpoint)
MODEL_FLAGS = ("model_arg", "weights", "normalize", "dataset", "resize")


def model_source(args: argparse.Namespace) -> Any:
    """The model the command evaluates: the --checkpoint path, or a checked
    :class:`robustact.models.external.ModelSpec` of --model-factory and its flags."""
    given = [flag_name(f) for f in MODEL_FLAGS if getattr(args, f) not in (None, [])]
    if args.checkpoint and (args.model_factory or given):
        raise ConfigError(f"give --checkpoint or --model-factory, not both (also given: "
                          f"{', '.join(given or ['--model-factory'])})")
    if args.checkpoint:
        return args.checkpoint
    if not args.model_factory:
        raise ConfigError("give the model: --checkpoint RUN_DIR, or --model-factory "
                          "pkg.mod:fn --weights FILE --dataset NAME")
    if not args.dataset:
        raise ConfigError("--model-factory needs --dataset, the data the model was trained "
                          "on, e.g. --dataset cifar10")
    from robustact.models.external import ModelSpec, parse_normalize

    return ModelSpec.from_dict({
        "factory": args.model_factory, "dataset": args.dataset,
        "args": key_values(args.model_arg, "--model-arg"), "weights": args.weights,
        "normalize": parse_normalize(args.normalize), "resize": args.resize}, "--model-factory")


def add_defense_arguments(p: argparse.ArgumentParser) -> None:
    """--sap FRAC and --defense SPEC: a post-hoc defense applied to the loaded network."""
    p.add_argument("--sap", type=float, metavar="FRAC",
                   help="apply SAP after every activation (1.0 = SAP-100)")
    p.add_argument("--defense", metavar="SPEC",
                   help="apply a post-hoc defense, e.g. dro:p=0.3 or rnw:s=0.01 "
                        "(robustact list defenses)")


def defense_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """The post-hoc defense --sap or --defense asks for (None: none), checked now: an
    unknown defense, parameter or value is one line before anything is loaded."""
    from robustact.defenses import check_defense

    if args.sap is not None and args.defense:
        raise ConfigError("give --sap or --defense, not both")
    if args.sap is None and not args.defense:
        return None
    defense = (parse_defense(args.defense) if args.defense
               else {"defense": "sap", "frac": args.sap})
    flag = "--defense" if args.defense else "--sap"
    try:
        check_defense(defense["defense"], {k: v for k, v in defense.items() if k != "defense"})
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{flag}: {str(exc).splitlines()[0]}; robustact list defenses "
                          "shows each defense's parameters") from None
    return defense


def parse_defense(spec: str) -> dict[str, Any]:
    """``"dro:p=0.3"`` -> ``{"defense": "dro", "p": 0.3}``."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise ConfigError(f"--defense expects NAME[:key=value,...], got {spec!r}")
    items = [i for i in rest.split(",") if i.strip()]
    return {"defense": name.strip(), **key_values(items, "--defense")}


def eps_list(text: str) -> list[float]:
    """``"0.1,8/255"`` -> ``[0.1, 0.0313...]``: the ``--eps`` of ``robustact attack``."""
    from robustact.options import parse_eps

    values = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        try:
            values.append(parse_eps(item, high=math.inf))
        except ConfigError:
            why = "is negative" if item.startswith("-") else "is not a number"
            raise ConfigError(f"--eps {item!r} {why}: give comma-separated numbers >= 0 "
                              "(or N/255), e.g. --eps 0.1,8/255") from None
    if not values:
        raise ConfigError("--eps needs at least one value, e.g. --eps 0.1")
    return values


#: ``robustact train`` flags copied into the options as they are
TRAIN_FLAGS = ("model", "dataset", "activation", "pretrained", "finetune_from", "data_dir",
               "batch_size", "augment", "resize", "train_subset", "test_subset", "epochs",
               "optimizer", "lr", "momentum", "weight_decay", "schedule", "gamma", "step_size",
               "warmup_epochs", "grad_clip", "amp", "seed", "device", "out", "metrics_file",
               "progress")
SPARSITY_FLAGS = (("sparsity_start", "start"), ("sparsity_target", "target"),
                  ("sparsity_step", "step"), ("sparsity_every", "every"),
                  ("sparsity_begin", "begin_epoch"))
ADVERSARIAL_FLAGS = (("adv", "method"), ("adv_eps", "eps"), ("adv_steps", "steps"),
                     ("adv_step_size", "step_size"), ("adv_fraction", "fraction"),
                     ("adv_guard", "guard"))
#: ``robustact rl train`` flags, each a DQNConfig option
RL_TRAIN_FLAGS = ("game", "network", "frames", "batch_size", "optimizer", "lr", "gamma",
                  "replay_size", "replay_start", "train_every", "target_update", "tau",
                  "eps_start", "eps_end", "eps_frames", "grad_clip", "max_episode_frames",
                  "log_every", "checkpoint_every", "seed", "device", "out", "progress")


def shipped_config(value: str | None) -> str | None:
    """A ``--config`` value: a path as given, or a config shipped with the package by name
    (``kwta02``, ``configs/kwta02.yaml`` from any directory)."""
    from pathlib import Path

    if not value or Path(value).is_file():
        return value
    from robustact.study.shipped import is_shipped, study_file

    return str(study_file(value)) if is_shipped(value) else value


def config_options(args: argparse.Namespace, flags: Iterable[str]) -> dict[str, Any]:
    """The ``--config`` file's options (if any) updated by the flags given."""
    from robustact.options import load_config_file

    args.config = shipped_config(args.config)
    options: dict[str, Any] = load_config_file(args.config) if args.config else {}
    return copy_given(args, flags, options)


def train_flags(args: argparse.Namespace) -> dict[str, str]:
    """``{option key: flag}`` of the training flags given (``adversarial.eps``: --adv-eps)."""
    return {**given_flags(args, TRAIN_FLAGS),
            **given_flags(args, SPARSITY_FLAGS, "sparsity."),
            **given_flags(args, ADVERSARIAL_FLAGS, "adversarial.")}


def train_config(args: argparse.Namespace, **overrides: Any) -> Any:
    """The checked :class:`robustact.train.TrainConfig` of ``train``/``lr-find``'s config file
    and flags (``overrides`` replace options); a bad value names its flag or file and key."""
    from robustact.train import TrainConfig

    with naming_flags(train_flags(args), args.config):
        return TrainConfig.from_dict({**train_options(args), **overrides})


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the config file (if any) and the explicit flags of ``train``/``lr-find``; flags win."""
    options = config_options(args, ())
    file_activation = options.get("activation")
    copy_given(args, TRAIN_FLAGS, options)
    if args.milestones is not None:
        options["milestones"] = _milestones(args.milestones)
    act_kwargs = _act_kwargs(args, options, file_activation)
    if args.model_arg:
        options["model_kwargs"] = {**(options.get("model_kwargs") or {}),
                                   **key_values(args.model_arg, "--model-arg")}
    if args.k is not None and args.ratio is None:
        act_kwargs["ratio"] = None
    options["act_kwargs"] = act_kwargs
    for key, flags in (("sparsity", SPARSITY_FLAGS), ("adversarial", ADVERSARIAL_FLAGS)):
        section = copy_given(args, flags, dict(options.get(key) or {}))
        if section:
            options[key] = section
    return options


def _milestones(text: str) -> list[int]:
    try:
        return [int(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise ConfigError(f"--milestones must be comma-separated epochs, got {text!r}") from None


def _act_kwargs(args: argparse.Namespace, options: dict[str, Any],
                file_activation: Any) -> dict[str, Any]:
    """The activation arguments: the file's (unless --activation names another), then flags."""
    given = options.get("act_kwargs") or {}
    if not isinstance(given, dict):
        where = f"{args.config}, " if getattr(args, "config", None) else ""
        raise ConfigError(f"{where}act_kwargs: must be a mapping of the activation's "
                          f"arguments, got {given!r}; give e.g. act_kwargs: {{ratio: 0.2}}")
    act_kwargs = dict(given)
    if args.activation is not None and args.activation != file_activation:
        act_kwargs = {}  # the file's activation arguments belong to the activation it named
    copy_given(args, ("ratio", "k", ("kwta_mode", "mode")), act_kwargs)
    act_kwargs.update(key_values(args.act_arg, "--act-arg"))
    return act_kwargs
