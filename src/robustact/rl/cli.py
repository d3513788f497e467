"""``robustact rl train|eval|run|table``: the command line of :mod:`robustact.rl` (a thin face:
it parses, calls the library, prints). Registered in :mod:`robustact.cli` by
:func:`add_rl_parser` and :func:`cmd_rl`; only argparse is imported until a command runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from robustact.errors import ConfigError

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

# flag -> DQNConfig option, for `rl train` (None values are not passed)
_TRAIN_FLAGS = ("game", "network", "frames", "batch_size", "optimizer", "lr", "gamma",
                "replay_size", "replay_start", "train_every", "target_update", "tau",
                "eps_start", "eps_end", "eps_frames", "grad_clip", "max_episode_frames",
                "log_every", "checkpoint_every", "seed", "device", "out", "progress")


def add_rl_parser(sub: Any) -> None:
    """Add the ``rl`` command and its actions to the subparsers ``sub``."""
    p = sub.add_parser("rl", help="DDQN agents on MinAtar games, dense vs SAP under FGSM",
                       epilog=RL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="rl_action", required=True, metavar="ACTION")
    t = actions.add_parser("train", help="train a Double-DQN agent on a MinAtar game",
                           epilog=RL_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
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
    e = actions.add_parser("eval", help="returns of the dense and SAP agent under FGSM",
                           epilog=RL_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
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
    r = actions.add_parser("run", help="run an RL study file (train, evaluate, record)",
                           epilog=RL_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("study", help="RL study YAML file, e.g. configs/rl/minatar.yaml")
    r.add_argument("--cell", action="append", default=[], metavar="ID",
                   help="run only this cell (repeatable)")
    r.add_argument("--out", help="study directory (default: the file's out)")
    r.add_argument("--list", action="store_true", help="list the cells and their status")
    tb = actions.add_parser("table", help="print an RL study's tables from its results store")
    tb.add_argument("study", help="RL study YAML file, study directory or results.sqlite")


def eps_values(text: str) -> list[float]:
    """``"0,1/255,0.02"`` -> ``[0.0, 0.0039..., 0.02]``."""
    from robustact.rl.study import parse_eps

    values = [parse_eps(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise ConfigError("--eps needs at least one lambda, e.g. --eps 0,4/255")
    return values


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's options (if any) updated by the flags given."""
    from robustact.options import load_config_file

    options: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for name in _TRAIN_FLAGS:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    return options


def cmd_rl(args: argparse.Namespace) -> int:
    """Run ``robustact rl ACTION``."""
    return {"train": _train, "eval": _eval, "run": _run, "table": _table}[args.rl_action](args)


def _train(args: argparse.Namespace) -> int:
    from robustact.rl.dqn import DQNConfig, train_dqn

    train_dqn(DQNConfig.from_dict(train_options(args)), resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from robustact.rl.dqn import load_agent
    from robustact.rl.evaluate import evaluate_agents, returns_table

    eps = eps_values(args.eps)
    model, ckpt = load_agent(args.checkpoint, device=args.device)
    bar = tqdm(unit="frame", disable=True if args.json else None)

    def progress(agent: str, frames: int) -> None:
        bar.set_description(agent, refresh=False)
        bar.update(frames)

    try:
        rows = evaluate_agents(model, ckpt, eps, episodes=args.episodes, sap_frac=args.sap,
                               samples=args.samples, mc_samples=args.mc_samples,
                               seed=args.seed, epsilon=args.epsilon,
                               max_frames=args.max_frames, device=args.device,
                               progress=progress)
    finally:
        bar.close()
    if args.json:
        print(json.dumps([_finite(r.to_dict()) for r in rows]))
    else:
        print(returns_table(rows, title=f"{ckpt['game']} ({args.checkpoint}, "
                                        f"{ckpt['frames']} training frames)"))
    return 0


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (the standard error of one episode) as null, for strict JSON readers."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _run(args: argparse.Namespace) -> int:
    from robustact.rl.study import load_rl_study, run_rl_study

    study = load_rl_study(args.study, out=args.out)
    if args.list:
        from robustact.results import ResultsStore

        store = ResultsStore(study.store_path) if study.store_path.exists() else None
        for cell in study.cells:
            run = store.run(study.name, cell.id) if store else None
            print(f"{cell.id:<24}{cell.train.game:<16}{run['status'] if run else 'not run'}")
        return 0
    statuses = run_rl_study(study, cells=args.cell or None)
    print((study.out / "results.md").read_text())
    failed = [c for c, s in statuses.items() if s != "done"]
    if failed:
        print(f"failed cells: {', '.join(failed)} (see their error.log)", file=sys.stderr)
        return 1
    return 0


def _table(args: argparse.Namespace) -> int:
    from robustact.rl.study import load_rl_study, rl_results_table
    from robustact.study.stores import open_study_store

    store, name, _ = open_study_store(args.study, load=load_rl_study, command="robustact rl run")
    print(rl_results_table(store, name))
    return 0
