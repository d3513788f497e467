"""``robustact rl train|eval|run|table``: the command line of :mod:`robustact.rl`."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from robustact.cli.common import (
    RL_TRAIN_FLAGS,
    add_command,
    add_study_arguments,
    config_options,
    naming_flags,
    report_failed,
)

RL_EXAMPLE = """\
examples:
  # a Double-DQN agent on MinAtar Breakout (checkpoint, metrics.jsonl in runs/rl/breakout)
  robustact rl train --game breakout --frames 200000 --out runs/rl/breakout
  robustact rl train --game breakout --frames 400000 --out runs/rl/breakout --resume
  # dense vs SAP-100 on its Q-network, FGSM on every observation at lambda 0, 1/255, 4/255
  robustact rl eval --checkpoint runs/rl/breakout --eps 0,1/255,4/255 --episodes 20
  # the study: every game trained, evaluated, recorded in runs/rl/minatar/results.sqlite
  robustact rl run configs/rl/minatar.yaml
  robustact rl table configs/rl/minatar.yaml
"""


def add_rl_parser(sub: Any) -> None:
    """Add the ``rl`` command and its actions to the subparsers ``sub``."""
    p = add_command(sub, "rl", "DDQN agents on MinAtar games, dense vs SAP under FGSM",
                    RL_EXAMPLE)
    actions = p.add_subparsers(dest="rl_action", required=True, metavar="ACTION")
    _add_train_action(actions)
    _add_eval_action(actions)
    r = add_command(actions, "run", "run an RL study file (train, evaluate, record)", RL_EXAMPLE)
    add_study_arguments(r, "RL study YAML file, e.g. configs/rl/minatar.yaml",
                        "run only this cell (repeatable)",
                        "study directory (default: the file's out)")
    tb = actions.add_parser("table", help="print an RL study's tables from its results store")
    tb.add_argument("study", help="RL study YAML file, study directory or results.sqlite")


def _add_train_action(actions: Any) -> None:
    t = add_command(actions, "train", "train a Double-DQN agent on a MinAtar game", RL_EXAMPLE)
    t.add_argument("--config", help="YAML file of DQN options; flags override it")
    t.add_argument("--game", help="asterix, breakout, freeway, seaquest, space_invaders")
    t.add_argument("--network", choices=("minatar", "nature"),
                   help="Q-network (default minatar: conv16-dense128)")
    t.add_argument("--frames", type=int, help="environment frames (default 200000)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=("adam", "rmsprop"))
    t.add_argument("--lr", type=float)
    t.add_argument("--gamma", type=float)
    t.add_argument("--replay-size", type=int)
    t.add_argument("--replay-start", type=int, help="random frames before updates start")
    t.add_argument("--train-every", type=int, help="frames between updates (default 1)")
    t.add_argument("--target-update", type=int, help="updates between target copies")
    t.add_argument("--tau", type=float, help="Polyak target rate instead of copies")
    t.add_argument("--eps-start", type=float)
    t.add_argument("--eps-end", type=float)
    t.add_argument("--eps-frames", type=int, help="frames of epsilon annealing")
    t.add_argument("--grad-clip", type=float)
    t.add_argument("--max-episode-frames", type=int)
    t.add_argument("--log-every", type=int)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    t.add_argument("--out", help="run directory (default runs/rl/<game>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--no-progress", dest="progress", action="store_const", const=False)


def _add_eval_action(actions: Any) -> None:
    e = add_command(actions, "eval", "returns of the dense and SAP agent under FGSM", RL_EXAMPLE)
    e.add_argument("--checkpoint", required=True, help="agent run directory or checkpoint.pt")
    e.add_argument("--eps", default="0", help="comma-separated FGSM lambdas on the [0, 1] "
                   "scale, N/255 allowed (default 0)")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--sap", type=float, default=1.0, metavar="FRAC",
                   help="SAP draws as a fraction of each map (default 1.0 = SAP-100)")
    e.add_argument("--no-sap", dest="sap", action="store_const", const=None,
                   help="evaluate the dense agent only")
    e.add_argument("--samples", type=int, default=100,
                   help="passes averaged for the SAP agent's Q-values (default 100)")
    e.add_argument("--mc-samples", type=int,
                   help="passes averaged for the attack gradient on SAP (default --samples)")
    e.add_argument("--seed", type=int, default=10_000, help="game i uses seed + i")
    e.add_argument("--epsilon", type=float, default=0.0, help="random-action rate (default 0)")
    e.add_argument("--max-frames", type=int, default=10_000, help="cut episodes at this length")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print the rows as JSON")


def cmd_rl(args: argparse.Namespace) -> int:
    """Run ``robustact rl ACTION``."""
    return {"train": _train, "eval": _eval, "run": _run, "table": _table}[args.rl_action](args)


def _train(args: argparse.Namespace) -> int:
    from robustact.rl.dqn import DQNConfig, train_dqn

    train_dqn(DQNConfig.from_dict(config_options(args, RL_TRAIN_FLAGS)), resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from robustact.report.rl import returns_table
    from robustact.rl.dqn import load_agent
    from robustact.rl.evaluate import evaluate_agents

    settings = _eval_settings(args)
    model, ckpt = load_agent(args.checkpoint, device=args.device)
    bar = tqdm(unit="frame", disable=True if args.json else None)

    def progress(agent: str, frames: int) -> None:
        bar.set_description(agent, refresh=False)
        bar.update(frames)

    try:
        rows = evaluate_agents(model, ckpt, list(settings.eps), episodes=settings.episodes,
                               sap_frac=settings.sap_frac, samples=settings.samples,
                               mc_samples=settings.mc_samples, seed=settings.seed,
                               epsilon=settings.epsilon, max_frames=settings.max_frames,
                               device=args.device, progress=progress)
    finally:
        bar.close()
    if args.json:
        print(json.dumps([_finite(r.to_dict()) for r in rows]))
    else:
        print(returns_table(rows, title=f"{ckpt['game']} ({args.checkpoint}, "
                                        f"{ckpt['frames']} training frames)"))
    return 0


#: the flag of each RL evaluation option (robustact.study.rl_config.RLEvalConfig)
RL_EVAL_FLAGS = {"eps": "--eps", "episodes": "--episodes", "sap_frac": "--sap",
                 "samples": "--samples", "mc_samples": "--mc-samples", "seed": "--seed",
                 "epsilon": "--epsilon", "max_frames": "--max-frames"}


def _eval_settings(args: argparse.Namespace) -> Any:
    """The flags of ``rl eval`` as a checked RLEvalConfig, as a study's ``evaluate:`` block."""
    from robustact.errors import ConfigError
    from robustact.study.rl_config import RLEvalConfig

    eps = [v.strip() for v in args.eps.split(",") if v.strip()]
    if not eps:
        raise ConfigError("--eps needs at least one lambda, e.g. --eps 0,4/255")
    values = {key: getattr(args, dest) for dest, key in
              (("episodes", "episodes"), ("sap", "sap_frac"), ("samples", "samples"),
               ("mc_samples", "mc_samples"), ("seed", "seed"), ("epsilon", "epsilon"),
               ("max_frames", "max_frames"))}
    where = "robustact rl eval"
    with naming_flags({f"{where}, evaluate.{k}": flag for k, flag in RL_EVAL_FLAGS.items()}):
        return RLEvalConfig.from_dict({"eps": eps, **values}, where)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (the standard error of one episode) as null, for strict JSON readers."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _run(args: argparse.Namespace) -> int:
    from robustact.study.rl_config import load_rl_study
    from robustact.study.runner import cell_statuses, run_rl_study

    study = load_rl_study(args.study, out=args.out)
    if args.list:
        games = {c.id: c.train.game for c in study.cells}
        for cell, status, _ in cell_statuses(study):
            print(f"{cell:<24}{games[cell]:<16}{status}")
        return 0
    statuses = run_rl_study(study, cells=args.cell or None)
    print((study.out / "results.md").read_text())
    return report_failed([c for c, s in statuses.items() if s != "done"])


def _table(args: argparse.Namespace) -> int:
    from robustact.report.rl import rl_results_table
    from robustact.study.rl_config import load_rl_study
    from robustact.study.stores import open_study_store

    store, name, _ = open_study_store(args.study, load=load_rl_study, command="robustact rl run")
    print(rl_results_table(store, name))
    return 0
