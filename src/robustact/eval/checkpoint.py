"""Evaluate a trained checkpoint under a suite of attacks and write the result beside it.

Shared by ``robustact attack`` and the study runner (``robustact run``)::

    record, report = attack_checkpoint("runs/demo", ["fgsm", "pgd:steps=40"], [0.1], n=1000)
    write_robustness(record, report, Path("runs/demo/robustness"))   # .json and .csv
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.eval.robustness import AttackSpec, RobustnessReport, evaluate
from robustact.files import atomic_path, write_json


def attack_checkpoint(
    checkpoint: str | Path,
    attacks: Sequence[str | dict[str, Any] | AttackSpec],
    eps_list: Sequence[float],
    n: int | None = None,
    *,
    suite: str | None = None,
    split: str = "test",
    norm: str | None = None,
    n_samples: int | None = 1,
    sequential: bool = True,
    diagnose: bool = True,
    probe_size: int = 200,
    device: str = "auto",
    data_dir: str | None = None,
    defense: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], RobustnessReport]:
    """Load ``checkpoint`` (file or run directory), evaluate the first ``n`` images of its
    dataset's ``split`` under the ``suite`` (``adaptive``, ``autoattack``, ...) and the listed
    ``attacks`` at every eps; returns (JSON-ready record, report). ``defense``
    (``{"defense": "sap", "frac": 1.0}``) is applied post hoc before evaluating."""
    specs = [AttackSpec.parse(a) for a in attacks]
    if not specs and suite in (None, "none"):
        raise ConfigError("give a suite (adaptive, autoattack, autoattack-rand) or attacks, "
                          "e.g. fgsm,pgd or pgd:steps=40")
    if norm:
        for spec in specs:
            spec.kwargs.setdefault("norm", norm)
    model, config, loader = _load(checkpoint, n, split, device, data_dir, defense)
    report = evaluate(model, loader, specs, eps_list, n_examples=n, suite=suite,
                      norm=norm or "linf", n_samples=n_samples,
                      sequential=sequential, diagnose=diagnose, probe_size=probe_size,
                      progress=progress)
    record = {"checkpoint": str(checkpoint), "model": config["model"], "defense": defense,
              "activation": config["activation"], "act_kwargs": config.get("act_kwargs"),
              "dataset": config["dataset"], "split": split, **report.to_dict()}
    return record, report


def _load(checkpoint: str | Path, n: int | None, split: str, device: str,
          data_dir: str | None, defense: dict[str, Any] | None) -> tuple[Any, dict, Any]:
    from robustact.data import BatchLoader, load_dataset
    from robustact.device import select_device
    from robustact.models.checkpoint import load_model

    model, config = load_model(checkpoint, select_device(device))
    if defense:
        from robustact.defenses import apply_defense

        params = {k: v for k, v in defense.items() if k != "defense"}
        apply_defense(model, defense["defense"], **params)
    dataset = load_dataset(config["dataset"], split,
                           data_dir=data_dir or config.get("data_dir")).subset(n or 10**9)
    loader = BatchLoader(dataset, batch_size=512, resize=config.get("resize"))
    return model, config, loader


def load_evaluation_data(checkpoint: str | Path, n: int | None, *, split: str = "test",
                         device: str = "auto", data_dir: str | None = None,
                         defense: dict[str, Any] | None = None,
                         ) -> tuple[Any, Any, Any]:
    """(model with ``defense`` applied, x, y): the first ``n`` images of the checkpoint's
    dataset, as the evaluation sees them (x on the CPU, in [0, 1])."""
    from robustact.eval.robustness import collect

    model, _, loader = _load(checkpoint, n, split, device, data_dir, defense)
    x, y = collect(loader, n)
    return model, x, y


def write_robustness(record: dict[str, Any], report: RobustnessReport, stem: Path) -> None:
    """``stem.json`` (the full record, per-example outcomes included) and ``stem.csv`` (one row
    per attack and eps), each written to a temporary name and renamed: never half a file."""
    write_json(stem.with_suffix(".json"), record)
    rows = report.rows()
    with atomic_path(stem.with_suffix(".csv")) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
