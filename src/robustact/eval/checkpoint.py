"""Evaluating a trained checkpoint: load it, evaluate it under an EvalConfig, make the record.

Shared by ``robustact attack`` and the study runner (``robustact run``)::

    config = EvalConfig.from_dict({"eps": [0.1], "n": 1000, "attacks": ["pgd:steps=40"]})
    shards = shard_dir("runs/demo", config)          # finished blocks, read back by a rerun
    record, report = attack_checkpoint("runs/demo", config, shards=shards)
    check_output(Path("runs/demo/robustness"))       # writable? asked before the attacks
    write_robustness(record, report, Path("runs/demo/robustness"))   # .json and .csv exports
    shards.remove()

Under torchrun every process calls it; the points are split over the processes
(:mod:`robustact.eval.shards`) and each process gets the whole record back.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustact.errors import RobustactError
from robustact.eval.config import EvalConfig
from robustact.eval.outcomes import RobustnessReport
from robustact.eval.record import EvalRecord
from robustact.eval.robustness import AttackSpec, collect, evaluate
from robustact.eval.shards import ShardDir
from robustact.files import (
    atomic_path,
    check_writable,
    describe_os_error,
    save_elsewhere,
    write_json,
)
from robustact.models.external import ModelSpec
from robustact.options import short_hash

Source = str | Path | ModelSpec  # a robustact checkpoint (file or run directory), or a user's model


def attack_checkpoint(
    checkpoint: Source,
    config: EvalConfig,
    *,
    device: str = "auto",
    data_dir: str | None = None,
    defense: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    shards: ShardDir | None = None,
) -> tuple[EvalRecord, RobustnessReport]:
    """Load ``checkpoint`` (file or run directory, or a :class:`ModelSpec`), evaluate the
    first ``config.n`` images of its dataset's ``config.split`` under ``config``; returns
    (record, report). ``defense`` (``{"defense": "sap", "frac": 1.0}``) is applied post hoc
    before evaluating; finished blocks of points are saved in (and read back from)
    ``shards``."""
    specs = [AttackSpec.parse(a) for a in config.attacks]
    if config.norm:
        for spec in specs:
            spec.kwargs.setdefault("norm", config.norm)
    model, meta, loader = load_source(checkpoint, config.n, config.split, device, data_dir,
                                      defense)
    report = evaluate(model, loader, specs, config.eps, n_examples=config.n,
                      suite=config.suite, norm=config.norm or "linf",
                      n_samples=config.samples, sequential=config.sequential,
                      diagnose=config.diagnose, probe_size=config.probe_size,
                      progress=progress, seed=config.seed, block=config.block,
                      shards=shards)
    record = EvalRecord.from_dict({
        "checkpoint": source_label(checkpoint), "model": meta["model"], "defense": defense,
        "activation": meta["activation"], "act_kwargs": meta.get("act_kwargs"),
        "dataset": meta["dataset"], "split": config.split, **report.to_dict()})
    return record, report


def shard_dir(root: str | Path, checkpoint: Source, config: EvalConfig,
              defense: dict[str, Any] | None = None) -> ShardDir:
    """The folder under ``root`` for the saved blocks of evaluating ``checkpoint`` under
    ``config``: named by what the blocks depend on (the weights file's size and time, the
    settings, seed and block size, the defense), so a changed evaluation never reads back
    another's blocks."""
    key = short_hash({"weights": _weights_identity(checkpoint),
                      "config": {**config.to_dict(), "calibration": None, "landscape": None},
                      "defense": defense})
    return ShardDir(Path(root) / key)


def _weights_identity(source: Source) -> list[Any]:
    """What the weights of ``source`` are: their file's path, size and time (and the spec of a
    user's model); a missing file is a one-line error."""
    from robustact.errors import CheckpointError
    from robustact.models.checkpoint import checkpoint_file

    if isinstance(source, ModelSpec):
        stamp = source.weights_stamp()
        if source.weights is not None and stamp is None:
            raise CheckpointError(f"weights {source.weights} not found; give the path of the "
                                  "model's weights file")
        return [*(stamp or []), source.to_dict()]
    weights = checkpoint_file(source).resolve()
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {weights} not found; train one with `robustact train`")
    stat = weights.stat()
    return [str(weights), stat.st_size, stat.st_mtime_ns]


def source_label(source: Source) -> str:
    """How records name a model source: the checkpoint path, or the user model's factory."""
    return source.label() if isinstance(source, ModelSpec) else str(source)


def _open_source(source: Source, device: str) -> tuple[Any, dict[str, Any]]:
    """(model, its config: model, activation, dataset, resize) of a checkpoint or a spec."""
    from robustact.device import select_device
    from robustact.models.checkpoint import load_model

    if not isinstance(source, ModelSpec):
        return load_model(source, select_device(device))
    from robustact.errors import ConfigError
    from robustact.models.external import build_external

    if source.dataset is None:
        raise ConfigError(f"model {source.label()}: give the dataset it was trained on (its "
                          "test images are attacked), e.g. --dataset cifar10")
    model = build_external(source, select_device(device))
    return model, {"model": source.factory, "activation": "external", "dataset": source.dataset,
                   "resize": source.resize}


def load_source(checkpoint: Source, n: int | None, split: str, device: str,
                data_dir: str | None, defense: dict[str, Any] | None) -> tuple[Any, dict, Any]:
    """(model with ``defense`` applied, its config, a loader of the first ``n`` images of its
    dataset's ``split``)."""
    from robustact.data import BatchLoader, load_dataset

    model, config = _open_source(checkpoint, device)
    if defense:
        from robustact.defenses import apply_defense

        params = {k: v for k, v in defense.items() if k != "defense"}
        apply_defense(model, defense["defense"], **params)
    dataset = load_dataset(config["dataset"], split,
                           data_dir=data_dir or config.get("data_dir")).subset(n or 10**9)
    loader = BatchLoader(dataset, batch_size=512, resize=config.get("resize"))
    return model, config, loader


def load_evaluation_data(checkpoint: Source, n: int | None, *, split: str = "test",
                         device: str = "auto", data_dir: str | None = None,
                         defense: dict[str, Any] | None = None,
                         ) -> tuple[Any, Any, Any]:
    """(model with ``defense`` applied, x, y): the first ``n`` images of the checkpoint's
    dataset, as the evaluation sees them (x on the CPU, in [0, 1])."""
    model, _, loader = load_source(checkpoint, n, split, device, data_dir, defense)
    x, y = collect(loader, n)
    return model, x, y


def check_output(stem: str | Path) -> Path:
    """Prove, before the expensive part, that the exports ``stem.json`` / ``stem.csv`` can be
    written (the folder is created if need be); a one-line error says why not."""
    stem = Path(stem)
    try:
        check_writable(stem.parent)
    except OSError as exc:
        raise RobustactError(f"cannot write the results {stem}.json/.csv: "
                             f"{describe_os_error(exc)}") from None
    return stem


def write_robustness(record: EvalRecord, report: RobustnessReport, stem: Path) -> Path:
    """Exports: ``stem.json`` (the full record, per-example outcomes included) and
    ``stem.csv`` (one row per attack and eps), each written atomically; returns ``stem``.

    When they cannot be written there (a full disk, a read-only folder, a file where a folder
    belongs) the computed result is not lost: it is written to the first writable of
    :func:`robustact.files.unsaved_dirs` and a one-line error says where."""
    try:
        _write_exports(record, report, stem)
    except OSError as exc:
        kept = save_elsewhere(f"{stem.name}-{os.getpid()}",
                              lambda other: _write_exports(record, report, other))
        where = (f"the result was saved to {kept}.json and .csv instead; copy it from there"
                 if kept is not None else
                 "no fallback folder could hold it either; free some space and rerun the same "
                 "command (it reads back the finished blocks that could be saved)")
        raise RobustactError(f"could not write the results {stem}.json/.csv: "
                             f"{describe_os_error(exc)}; {where}") from None
    return stem


def _write_exports(record: EvalRecord, report: RobustnessReport, stem: Path) -> None:
    write_json(stem.with_suffix(".json"), record.to_dict())
    rows = report.rows()
    with atomic_path(stem.with_suffix(".csv")) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
