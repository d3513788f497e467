"""An RL study: a YAML file of games -> trained DDQN agents -> dense vs SAP under FGSM ->
results store -> table. The file has the layout of the image studies (:mod:`robustact.study`):

.. code-block:: yaml

    name: rl_minatar
    out: runs/rl/minatar              # each cell trains into out/<cell id>
    train:                            # DQNConfig options shared by every cell
      frames: 200000
    grid:                             # the cartesian product of these options ...
      game: [breakout, space_invaders, freeway, asterix]
    cells:                            # ... and/or explicit cells (an id and overrides)
      - {id: breakout_nature, game: breakout, network: nature}
    evaluate:
      eps: [0, 1/255, 4/255]          # FGSM lambda on the [0, 1] scale; "N/255" allowed
      episodes: 20
      sap_frac: 1.0                   # SAP-100 on the Q-network (null: dense only)
      samples: 100                    # passes averaged for the SAP agent's Q-values
      mc_samples: 100                 # passes averaged for the attack's gradient (EOT)

Each cell is recorded in ``<out>/results.sqlite`` (:class:`robustact.results.ResultsStore`):
one run per cell with its configuration, seed, code version and timings, the training
history as its epochs (one row per ``log_every`` frames), and one ``rl_returns`` artifact per
agent and lambda (:class:`robustact.rl.evaluate.AgentReturns` as a dict: every episode's
return). :func:`rl_results_table` renders the tables from those records only; ``robustact rl
run`` writes them to ``<out>/results.md``. Re-running reuses a finished training run with the
same configuration hash (an interrupted one resumes) and an evaluation with the same settings.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustact import options
from robustact.errors import ConfigError
from robustact.rl.dqn import DQNConfig

EVALUATE_DEFAULTS: dict[str, Any] = {"eps": [0.0], "episodes": 10, "sap_frac": 1.0,
                                     "samples": 100, "mc_samples": None, "seed": 10_000,
                                     "epsilon": 0.0, "max_frames": 10_000}
RETURNS = "rl_returns"  # the artifact kind; robustact.report.render.RL_RETURNS reads it
EVAL_FILE = "rl_eval.json"


def parse_eps(value: Any) -> float:
    """A lambda from a number or a ``"N/255"``-style string (YAML has no fractions)."""
    return options.parse_eps(value, what="FGSM lambda")


@dataclass
class RLCell:
    id: str
    train: DQNConfig
    evaluate: dict[str, Any]

    @property
    def out(self) -> Path:
        return Path(str(self.train.out))


@dataclass
class RLStudy:
    name: str
    out: Path
    cells: list[RLCell] = field(default_factory=list)

    def cell(self, cell_id: str) -> RLCell:
        from robustact.study.config import find_cell

        return find_cell(self.name, self.cells, cell_id)

    @property
    def store_path(self) -> Path:
        return self.out / "results.sqlite"


def check_evaluate(where: str, evaluate: dict[str, Any]) -> dict[str, Any]:
    """The evaluation settings with defaults filled in and lambdas parsed."""
    unknown = sorted(set(evaluate) - set(EVALUATE_DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown evaluate key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(EVALUATE_DEFAULTS))}")
    out = {**EVALUATE_DEFAULTS, **evaluate}
    eps = out["eps"] if isinstance(out["eps"], list) else [out["eps"]]
    if not eps:
        raise ConfigError(f"{where}: evaluate eps needs at least one lambda, e.g. [0, 4/255]")
    out["eps"] = [parse_eps(e) for e in eps]
    if out["sap_frac"] is not None:
        from robustact.defenses.sap import check_frac

        out["sap_frac"] = check_frac(out["sap_frac"])
    for key in ("episodes", "samples", "max_frames"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: evaluate {key} must be a positive integer, got "
                              f"{value!r}")
    return out


def is_rl_study_file(path: str | Path) -> bool:
    """Whether a study file describes RL cells (a ``game`` in its grid or cells)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # the study loader reports what is wrong with the file
    if not isinstance(data, dict):
        return False
    grid = data.get("grid") if isinstance(data.get("grid"), dict) else {}
    cells = data.get("cells") if isinstance(data.get("cells"), list) else []
    return "game" in grid or any(isinstance(c, dict) and "game" in c for c in cells)


def load_rl_study(path: str | Path, out: str | Path | None = None) -> RLStudy:
    """Read and check an RL study file (see the module docstring)."""
    from robustact.study.config import merge, read_study_layout

    layout = read_study_layout(path, out, default_root="runs/rl",
                               example=", e.g. grid: {game: [breakout]}")
    name, root, base, overrides = layout.name, layout.root, layout.base, layout.cells
    evaluate = layout.evaluate
    cells = []
    for cell_id, override in overrides:
        cell_eval = check_evaluate(f"{path}, cell {cell_id}",
                                   merge(evaluate, override.pop("evaluate", None) or {}))
        options = {**merge(base, override), "out": str(root / cell_id)}
        try:
            config = DQNConfig.from_dict(options)
        except ConfigError as exc:
            raise ConfigError(f"{path}, cell {cell_id}: {exc}") from None
        cells.append(RLCell(cell_id, config, cell_eval))
    return RLStudy(name, root, cells)


def _evaluate_hash(cell: RLCell) -> str:
    from robustact.options import short_hash

    return short_hash({"train": cell.train.hash(), "evaluate": cell.evaluate})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_rl_cell(study: RLStudy, cell: RLCell, *, log: Callable[[str], None] = print) -> str:
    """Train (or reuse) and evaluate one cell, recording it in the study's store; returns
    ``"done"`` or ``"failed"`` (a failure is logged and recorded, not raised)."""
    from robustact.device import select_device
    from robustact.results import ResultsStore
    from robustact.rl.dqn import load_agent, train_dqn
    from robustact.rl.evaluate import AgentReturns, evaluate_agents, returns_table

    store = ResultsStore(study.store_path)
    # model / dataset / activation: what the generic tables of the store and report group by
    config = {**cell.train.to_dict(), "kind": "rl-ddqn", "model": f"ddqn_{cell.train.network}",
              "dataset": f"minatar_{cell.train.game}", "activation": "relu",
              "evaluate": cell.evaluate}
    try:
        device = str(select_device(cell.train.device))
    except ConfigError:
        device = None
    kw = dict(config=config, config_hash=cell.train.hash(), device=device,
              seed=cell.train.seed)
    run_id = store.record_run(study.name, cell.id, status="running", **kw)
    train_seconds = eval_seconds = None
    error = None
    try:
        summary = _read_json(cell.out / "summary.json") or {}
        if summary.get("config_hash") == cell.train.hash():
            log(f"[{cell.id}] trained earlier: {cell.out}")
            train_seconds = summary.get("seconds")
        else:
            resume = (cell.out / "checkpoint.pt").exists()
            log(f"[{cell.id}] {'resuming' if resume else 'training'} -> {cell.out}")
            result = train_dqn(cell.train, resume=resume, log=lambda m: log(f"[{cell.id}] {m}"))
            train_seconds = round(result.seconds, 1)
        model, ckpt = load_agent(cell.out, device=device or "cpu")
        store.record_epochs(run_id, ckpt["history"])
        key = _evaluate_hash(cell)
        saved = _read_json(cell.out / EVAL_FILE) or {}
        if saved.get("evaluate_hash") == key:
            log(f"[{cell.id}] evaluated earlier: {cell.out / EVAL_FILE}")
            rows = [AgentReturns.from_dict(r) for r in saved["rows"]]
            eval_seconds = saved.get("seconds")
        else:
            ev = cell.evaluate
            log(f"[{cell.id}] evaluating dense"
                + (f" and SAP (frac {ev['sap_frac']:g})" if ev["sap_frac"] is not None else "")
                + f" at lambda {', '.join(f'{e:.4g}' for e in ev['eps'])} on "
                  f"{ev['episodes']} episodes")
            start = time.perf_counter()
            rows = evaluate_agents(model, ckpt, ev["eps"], episodes=ev["episodes"],
                                   sap_frac=ev["sap_frac"], samples=ev["samples"],
                                   mc_samples=ev["mc_samples"], seed=ev["seed"],
                                   epsilon=ev["epsilon"], max_frames=ev["max_frames"],
                                   device=device or "cpu")
            eval_seconds = round(time.perf_counter() - start, 1)
            (cell.out / EVAL_FILE).write_text(json.dumps(
                {"evaluate_hash": key, "seconds": eval_seconds,
                 "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")
        for r in rows:
            store.record_artifact(run_id, RETURNS, _artifact_key(r.agent, r.eps), r.to_dict())
        log(f"[{cell.id}]\n{returns_table(rows)}")
        status = "done"
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the study
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        status = "failed"
        log(f"[{cell.id}] FAILED: {error}")
        cell.out.mkdir(parents=True, exist_ok=True)
        (cell.out / "error.log").write_text(traceback.format_exc())
    store.record_run(study.name, cell.id, status=status, error=error,
                     train_seconds=train_seconds, eval_seconds=eval_seconds, **kw)
    return status


def _artifact_key(agent: str, eps: float) -> str:
    return f"{agent} fgsm eps={eps!r}"


def run_rl_study(study: RLStudy, *, cells: list[str] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the given cells (all by default) one after another, then write
    ``<out>/results.md`` from the store; returns each cell's status."""
    from robustact.results import ResultsStore

    chosen = [study.cell(c) for c in cells] if cells else study.cells
    statuses = {}
    for i, cell in enumerate(chosen, 1):
        log(f"== cell {i}/{len(chosen)}: {cell.id}")
        statuses[cell.id] = run_rl_cell(study, cell, log=log)
    table = rl_results_table(ResultsStore(study.store_path), study.name)
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "results.md").write_text(table + "\n")
    log(f"results: {study.out / 'results.md'}")
    return statuses


def rl_results_table(store: Any, study: str) -> str:
    """Markdown rendered from the store's records of ``study`` only: the relative change of
    the SAP agent's mean return over the dense agent's per game and lambda (seed 004, Table 1
    layout), then per game the mean returns with standard errors and the training budget."""
    from robustact.rl.evaluate import (
        DENSE,
        AgentReturns,
        format_change,
        relative_changes,
        returns_table,
    )

    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.studies()) or "none"
        raise ConfigError(f"results store {store.path} has no runs of study {study!r}; "
                          f"studies: {known}")
    per_run = []
    for run in runs:
        rows = [AgentReturns.from_dict(a["payload"]) for a in store.artifacts(run["id"], RETURNS)]
        per_run.append((run, rows))
    eps_values = sorted({r.eps for _, rows in per_run for r in rows})
    sap_agents = list(dict.fromkeys(r.agent for _, rows in per_run for r in rows
                                    if r.agent != DENSE))
    lines = [f"# {study}: SAP on DDQN agents under FGSM (MinAtar)", ""]
    for agent in sap_agents:
        lines += [f"## Relative change in mean return, {agent} vs dense (%)", "",
                  "| cell | game | " + " | ".join(f"λ={255 * e:.3g}/255" for e in eps_values)
                  + " |", "|" + "---|" * (len(eps_values) + 2)]
        for run, rows in per_run:
            cells = [format_change(c) for c in relative_changes(rows, agent, eps_values)]
            lines.append(f"| {run['cell']} | {(run['config'] or {}).get('game', '-')} | "
                         + " | ".join(cells) + " |")
        lines += ["", "n/a: the dense agent's mean return is 0 (relative change undefined).", ""]
    lines += ["## Mean returns per game", ""]
    for run, rows in per_run:
        config = run["config"] or {}
        budget = (f"{config.get('frames')} frames, network {config.get('network')}, "
                  f"{config.get('optimizer')} lr {config.get('lr')}, seed {run['seed']}, "
                  f"status {run['status']}")
        if run.get("train_seconds"):
            budget += f", trained in {run['train_seconds']:.0f} s"
        if run.get("error"):
            budget += f", error: {run['error']}"
        lines += [f"### {run['cell']}", "", budget, ""]
        if rows:
            ev = config.get("evaluate") or {}
            lines += [returns_table(rows), "",
                      f"SAP agent: Q-values averaged over {ev.get('samples')} passes, FGSM "
                      f"gradient over {ev.get('mc_samples') or ev.get('samples')} (EOT); "
                      f"episodes capped at {ev.get('max_frames')} frames, "
                      f"{sum(r.truncated for r in rows)} cut.", ""]
    return "\n".join(lines).rstrip() + "\n"
