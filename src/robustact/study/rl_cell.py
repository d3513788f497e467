"""The RL cell's steps: train (or reuse) a DDQN agent, play it dense and with SAP under FGSM.

:class:`RLWork` implements :class:`robustact.study.lifecycle.CellWork` for the cells of an
RL study file (:class:`robustact.study.rl_config.RLCell`). Every agent's returns at every
lambda are recorded as ``rl_returns`` artifacts (:class:`robustact.rl.evaluate.AgentReturns`
as a dict), and the evaluation's hash as an evaluation without attack rows.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from robustact.eval.record import EvalRecord
from robustact.files import read_json
from robustact.options import short_hash
from robustact.results import ResultsStore
from robustact.study.lifecycle import CellWrapper, Log, Trained, resolved_device
from robustact.study.rl_config import RLCell

RETURNS = "rl_returns"  # the artifact kind the RL tables read


@dataclasses.dataclass
class RLWork(CellWrapper):
    """An RL cell, as the lifecycle drives it."""

    cell: RLCell

    def run_config(self) -> dict[str, Any]:
        # model / dataset / activation: what the generic tables of the store and report group by
        train = self.cell.train
        return {**train.to_dict(), "kind": "rl-ddqn", "model": f"ddqn_{train.network}",
                "dataset": f"minatar_{train.game}", "activation": "relu",
                "evaluate": self.cell.evaluate.to_dict()}

    def train_hash(self) -> str:
        return self.cell.train.hash()

    def evaluate_hashes(self) -> tuple[str, ...]:
        return (short_hash({"train": self.train_hash(),
                            "evaluate": self.cell.evaluate.to_dict()}),)

    def train(self, log: Log) -> Trained:
        """Train the agent, resume it, or reuse a finished run with the same hash."""
        from robustact.rl.dqn import load_agent_checkpoint, train_dqn

        cell = self.cell
        summary = read_json(cell.out / "summary.json") or {}
        if summary.get("config_hash") == cell.train.hash():
            log(f"trained earlier: {cell.out}")
            seconds = summary.get("seconds")
        else:
            resume = (cell.out / "checkpoint.pt").exists()
            log(f"{'resuming' if resume else 'training'} -> {cell.out}")
            seconds = round(train_dqn(cell.train, resume=resume, log=log).seconds, 1)
        history = load_agent_checkpoint(cell.out)["history"]
        return Trained(seconds, history)

    def evaluate(self, store: ResultsStore, run_id: int, log: Log) -> float:
        """Play the dense and the SAP agent at every lambda; record the returns."""
        from robustact.rl.dqn import load_agent
        from robustact.rl.evaluate import evaluate_agents

        ev = self.cell.evaluate
        device = resolved_device(self.cell.train.device) or "cpu"  # as before: else the CPU
        log("evaluating dense"
            + (f" and SAP (frac {ev.sap_frac:g})" if ev.sap_frac is not None else "")
            + f" at lambda {', '.join(f'{e:.4g}' for e in ev.eps)} on {ev.episodes} episodes")
        model, ckpt = load_agent(self.cell.out, device=device)
        start = time.perf_counter()
        rows = evaluate_agents(model, ckpt, list(ev.eps), episodes=ev.episodes,
                               sap_frac=ev.sap_frac, samples=ev.samples,
                               mc_samples=ev.mc_samples, seed=ev.seed, epsilon=ev.epsilon,
                               max_frames=ev.max_frames, device=device)
        seconds = round(time.perf_counter() - start, 1)
        for r in rows:
            store.record_artifact(run_id, RETURNS, f"{r.agent} fgsm eps={r.eps!r}", r.to_dict())
        store.record_robustness(run_id, EvalRecord(
            rows=[], model=f"ddqn_{self.cell.train.network}", split="episodes",
            dataset=f"minatar_{self.cell.train.game}", n=ev.episodes, eps_list=list(ev.eps),
            seconds=seconds, evaluate_hash=self.evaluate_hashes()[0], cell=self.cell.id))
        log(f"\n{_returns_table(rows)}")
        return seconds


def _returns_table(rows: list[Any]) -> str:
    from robustact.report.rl import returns_table

    return returns_table(rows)
