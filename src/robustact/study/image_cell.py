"""The image cell's steps: train (or reuse) a network, evaluate it, record the evaluation.

:class:`ImageWork` implements :class:`robustact.study.lifecycle.CellWork` for the cells of an
image study file (:class:`robustact.study.config.Cell`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.files import read_json
from robustact.report.robustness import robustness_table
from robustact.results import ResultsStore
from robustact.study.config import Cell
from robustact.study.lifecycle import CellWrapper, Log, Trained
from robustact.train.metrics import read_metrics

ROBUSTNESS = "robustness"  # the export's stem: robustness.json and robustness.csv


@dataclasses.dataclass
class ImageWork(CellWrapper):
    """An image cell, as the lifecycle drives it."""

    cell: Cell

    def run_config(self) -> dict[str, Any]:
        cell = self.cell
        if cell.external is not None:
            return {"external": cell.external.to_dict(), "posthoc": cell.posthoc}
        return {**cell.train.to_dict(), "out": str(cell.train_dir), "posthoc": cell.posthoc}

    def train_hash(self) -> str:
        return self.cell.train_hash()

    def source(self) -> Any:
        """What the cell evaluates: its trained run directory, or the user's model."""
        return self.cell.external if self.cell.external is not None else self.cell.train_dir

    def evaluate_hashes(self) -> tuple[str, ...]:
        cell = self.cell
        return tuple(h for h in (cell.evaluate_hash(), cell.legacy_evaluate_hash()) if h)

    def train(self, log: Log) -> Trained:
        """Train the cell's network, resume it, or reuse a finished run with its hash."""
        from robustact.train import train

        cell, tdir = self.cell, self.cell.train_dir
        if cell.external is not None:
            log(f"external model {cell.external.label()}: evaluated as given, not trained")
            return Trained(None, [], reused=True)
        source = cell.train.finetune_from
        if source and not Path(source).exists() and cell.needs:
            raise ConfigError(f"cell {cell.id} fine-tunes from cell {cell.needs[0]}, which has "
                              "no checkpoint yet; run that cell first")
        seconds = None
        trained_hash = (read_json(tdir / "summary.json") or {}).get("config_hash")
        if trained_hash == cell.train.hash():
            log(f"trained earlier: {tdir}")
        elif trained_hash is not None:
            raise ConfigError(
                f"{tdir} holds a run trained with other options (the study file changed); "
                f"move it away (mv {tdir} {tdir}.old) and rerun to retrain cell {cell.id}")
        else:
            resume = (tdir / "checkpoint.pt").exists()
            log(f"{'resuming' if resume else 'training'} -> {tdir}")
            start = time.perf_counter()
            train(dataclasses.replace(cell.train, out=str(tdir)), resume=resume, log=log)
            seconds = round(time.perf_counter() - start, 1)
        history = read_metrics(tdir / "metrics.jsonl")
        if seconds is None and history:  # reused: the epochs' own times (0.0 is a time:
            # a tiny training rounds to it, and None would read as "not recorded")
            seconds = round(sum(r.get("seconds", 0) for r in history), 1)
        return Trained(seconds, history)

    def evaluate(self, store: ResultsStore | None, run_id: int | None, log: Log) -> float:
        """Evaluate the trained network (with the cell's post-hoc defense), record it and
        export robustness.json / .csv; then the optional calibration and landscape. Finished
        blocks of points wait in ``<cell>/shards`` until the record is stored; in a process
        group every process evaluates its share and rank 0 (``store`` given) records."""
        from robustact.eval.checkpoint import attack_checkpoint, shard_dir, write_robustness

        cell, config = self.cell, self.cell.evaluate
        assert config is not None  # the lifecycle evaluates only cells with settings
        defense = f" with {posthoc_label(cell.posthoc)}" if cell.posthoc else ""
        what = [f"suite {config.suite}"] * bool(config.suite) + list(map(str, config.attacks))
        log(f"evaluating{defense}: {', '.join(what)} at eps {list(config.eps)} on "
            f"{config.n} images")
        start = time.perf_counter()
        shards = shard_dir(cell.out / "shards", self.source(), config, cell.posthoc)
        record, report = attack_checkpoint(self.source(), config, defense=cell.posthoc,
                                           device=cell.train.device, progress=log,
                                           shards=shards)
        seconds = round(time.perf_counter() - start, 1)
        if store is None or run_id is None:
            return seconds
        record.evaluate_hash, record.cell, record.posthoc = cell.evaluate_hash(), cell.id, \
            cell.posthoc
        write_robustness(record, report, cell.out / ROBUSTNESS)
        store.record_robustness(run_id, record)
        shards.remove()
        record_artifacts(cell, self.source(), store, run_id, log)
        log(f"\n{robustness_table(report)}")
        if report.diagnostics is not None:
            log(report.diagnostics.verdict)
        return seconds


def posthoc_label(posthoc: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in posthoc.items() if k != "defense")
    return f"{posthoc['defense']}({params})" if params else str(posthoc["defense"])


def record_artifacts(cell: Cell, source: Any, store: ResultsStore, run_id: int,
                     log: Log) -> None:
    """Reliability diagrams (clean and FGSM at each eps) and a loss landscape, when the
    evaluation asks for them (``calibration: true`` / ``landscape: true``, or a mapping of
    options: ``calibration: {n: 1000, bins: 15}``, ``landscape: {n: 32, steps: 21}``)."""
    from robustact.eval.checkpoint import load_evaluation_data

    config = cell.evaluate
    if config is None or (config.calibration is None and config.landscape is None):
        return
    n_cal = int(config.calibration.get("n", config.n)) if config.calibration is not None else 0
    n_land = int(config.landscape.get("n", 32)) if config.landscape is not None else 0
    # one load for both: the first max(n) images of the evaluation split
    model, x, y = load_evaluation_data(source, max(n_cal, n_land), split=config.split,
                                       device=cell.train.device, defense=cell.posthoc)
    samples = config.samples or 1
    if config.calibration is not None:
        _record_calibration(store, run_id, model, x[:n_cal], y[:n_cal], config, samples)
        log("calibration recorded")
    if config.landscape is not None:
        from robustact.eval.landscape import loss_landscape

        options = config.landscape
        payload = loss_landscape(model, x[:n_land], y[:n_land],
                                 eps=float(options.get("eps", max(config.eps))),
                                 steps=int(options.get("steps", 21)), n_samples=samples)
        store.record_artifact(run_id, "landscape", "test", payload)
        log("loss landscape recorded")


def _record_calibration(store: ResultsStore, run_id: int, model: Any, x: Any, y: Any,
                        config: Any, samples: int) -> None:
    from robustact.attacks import FGSM
    from robustact.attacks.wrappers import EOT
    from robustact.eval.calibration import calibrate

    bins = int(config.calibration.get("bins", 15))
    store.record_artifact(run_id, "calibration", "clean",
                          calibrate(model, x, y, n_samples=samples, bins=bins).to_dict())
    attacked = EOT(model, samples) if samples > 1 else model
    for eps in config.eps:
        x_adv = FGSM(eps=float(eps))(attacked, x, y).x_adv.cpu()
        store.record_artifact(run_id, "calibration", f"fgsm eps={float(eps):g}",
                              calibrate(model, x_adv, y, n_samples=samples, bins=bins).to_dict())
