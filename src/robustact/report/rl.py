"""The reinforcement-learning tables: mean returns and their relative change, dense vs SAP.

    returns_table(rows)              # one agent evaluation (robustact rl eval)
    rl_results_table(store, study)   # a whole study, from its store (results.md)
    rl_tables(records)               # the same numbers as the report's tables

The relative change is the seed's Table 1 (SAP paper, section 4.2):
``100 (R_sap - R_dense) / |R_dense|`` at each FGSM lambda
(:func:`robustact.rl.evaluate.relative_changes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from robustact.report.records import RunRecords, load_records
from robustact.report.table import NUMBER, TEXT, Table

if TYPE_CHECKING:
    from robustact.results.store import ResultsStore
    from robustact.rl.evaluate import AgentReturns

RL_RETURNS = "rl_returns"  # the artifact kind robustact.rl records per (agent, lambda)
DENSE = "dense"  # robustact.rl.evaluate.DENSE: the agent the others are compared with


def format_change(change: float) -> str:
    """``+12.3`` or ``n/a`` (undefined)."""
    return "n/a" if math.isnan(change) else f"{change:+.1f}"


def agent_returns(record: RunRecords) -> list[AgentReturns]:
    """The :class:`AgentReturns` a run recorded (its ``rl_returns`` artifacts)."""
    from robustact.rl.evaluate import AgentReturns

    return [AgentReturns.from_dict(p) for p in record.payloads(RL_RETURNS)]


def is_rl(record: RunRecords) -> bool:
    return any(a["kind"] == RL_RETURNS for a in record.artifacts)


def _changes(rows: Sequence[AgentReturns], agent: str, eps_values: list[float]) -> list[str]:
    from robustact.rl.evaluate import relative_changes

    return [format_change(c) for c in relative_changes(rows, agent, eps_values)]


def _lambdas(eps_values: list[float]) -> list[str]:
    return [f"λ={255 * e:.3g}/255" for e in eps_values]


def _mean_text(row: AgentReturns | None, always_stderr: bool = False) -> str:
    """``4.50 ± 0.50``; without the ± for an undefined standard error unless
    ``always_stderr``; ``-`` for no row."""
    if row is None:
        return "-"
    if math.isnan(row.stderr) and not always_stderr:
        return f"{row.mean:.2f}"
    return f"{row.mean:.2f} ± {row.stderr:.2f}"


def returns_table(rows: Sequence[AgentReturns], title: str | None = None) -> str:
    """A markdown table: per lambda the dense and SAP mean returns (+- standard error) and the
    relative change in percent (seed 004, Table 1)."""
    agents = list(dict.fromkeys(r.agent for r in rows))
    eps_values = sorted({r.eps for r in rows})
    by = {(r.agent, r.eps): r for r in rows}
    others = [a for a in agents if a != DENSE]
    changes = {a: _changes(rows, a, eps_values) for a in others}
    head = ["lambda", "lambda x 255", *(f"{a} return" for a in agents),
            *(f"{a} vs dense (%)" for a in others)]
    body = [[f"{e:.4g}", f"{255 * e:.3g}",
             *(_mean_text(by.get((a, e)), always_stderr=True) for a in agents),
             *(changes[a][i] for a in others)] for i, e in enumerate(eps_values)]
    n = next((len(r.returns) for r in rows), 0)
    lines = [f"### {title}", ""] if title else []
    return "\n".join([*lines, Table(None, head, body).to_markdown(), "",
                      f"Mean return over {n} episodes ± standard error; relative change "
                      "100 (R_SAP - R_dense) / |R_dense| at the same lambda (n/a: dense "
                      "return 0)."])


def rl_tables(records: list[RunRecords]) -> list[Table]:
    """The report's tables of the reinforcement-learning runs (``robustact rl``): the seed's
    Table 1 layout, the relative change of the SAP agent's mean return over the dense agent's
    per game and lambda, then the mean returns with their standard errors."""
    runs = [(r, rows) for r in records if (rows := agent_returns(r))]
    if not runs:
        return []
    eps_values = sorted({row.eps for _, rows in runs for row in rows})
    agents = list(dict.fromkeys(row.agent for _, rows in runs for row in rows))
    lam = _lambdas(eps_values)
    tables = []
    for agent in (a for a in agents if a != DENSE):
        body = [[r.cell, str(r.get("game") or "-"), *_changes(rows, agent, eps_values)]
                for r, rows in runs]
        tables.append(Table(f"MinAtar DDQN: relative change of the mean return, {agent} vs "
                            "dense (%)", ["Cell", "Game", *lam], body,
                            ["100 (R_sap - R_dense) / |R_dense| at each FGSM lambda on the "
                             "observations, as in the seed's Table 1; n/a: the dense agent's "
                             "mean return is 0."], [TEXT] * 2 + [NUMBER] * len(lam)))
    body = []
    for r, rows in runs:
        by = {(row.agent, row.eps): row for row in rows}
        body += [[r.cell, str(r.get("game") or "-"), agent,
                  *(_mean_text(by.get((agent, e))) for e in eps_values)]
                 for agent in agents]
    tables.append(Table("MinAtar DDQN: mean return per episode", ["Cell", "Game", "Agent", *lam],
                        body, ["± one standard error over the evaluation episodes."],
                        [TEXT] * 3 + [NUMBER] * len(lam)))
    return tables


def rl_results_table(store: ResultsStore, study: str) -> str:
    """Markdown rendered from the store's records of ``study`` only: the relative change of
    the SAP agent's mean return over the dense agent's per game and lambda (seed 004, Table 1
    layout), then per game the mean returns with standard errors and the training budget."""
    per_run = [(r, agent_returns(r)) for r in load_records(store, study)]
    eps_values = sorted({r.eps for _, rows in per_run for r in rows})
    sap_agents = list(dict.fromkeys(r.agent for _, rows in per_run for r in rows
                                    if r.agent != DENSE))
    lines = [f"# {study}: SAP on DDQN agents under FGSM (MinAtar)", ""]
    for agent in sap_agents:
        body = [[r.cell, str(r.config.get("game", "-")), *_changes(rows, agent, eps_values)]
                for r, rows in per_run]
        lines += [Table(f"Relative change in mean return, {agent} vs dense (%)",
                        ["cell", "game", *_lambdas(eps_values)], body,
                        ["n/a: the dense agent's mean return is 0 (relative change undefined)."],
                        level=2).to_markdown(), ""]
    lines += ["## Mean returns per game", ""]
    for r, rows in per_run:
        lines += [f"### {r.cell}", "", _budget(r.run), ""]
        if rows:
            ev = r.config.get("evaluate") or {}
            lines += [returns_table(rows), "",
                      f"SAP agent: Q-values averaged over {ev.get('samples')} passes, FGSM "
                      f"gradient over {ev.get('mc_samples') or ev.get('samples')} (EOT); "
                      f"episodes capped at {ev.get('max_frames')} frames, "
                      f"{sum(row.truncated for row in rows)} cut.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _budget(run: dict[str, Any]) -> str:
    """How a cell was trained: frames, network, optimizer, seed, status (and time, error)."""
    config = run["config"] or {}
    budget = (f"{config.get('frames')} frames, network {config.get('network')}, "
              f"{config.get('optimizer')} lr {config.get('lr')}, seed {run['seed']}, "
              f"status {run['status']}")
    if run.get("train_seconds"):
        budget += f", trained in {run['train_seconds']:.0f} s"
    if run.get("error"):
        budget += f", error: {run['error']}"
    return budget
