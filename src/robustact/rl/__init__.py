"""Reinforcement learning: SAP on Double-DQN agents under adversarial observations (seed 004,
section 4.2 and Table 1), on MinAtar's 10x10 games instead of the paper's Atari.

    >>> from robustact.rl import DQNConfig, train_dqn, load_agent, evaluate_agents
    >>> result = train_dqn(DQNConfig(game="breakout", frames=200_000))
    >>> model, ckpt = load_agent(result.checkpoint)
    >>> table = evaluate_agents(model, ckpt, eps_list=[0, 4 / 255], episodes=10)

Rooms: ``games`` (MinAtar wrapper), ``network`` (Q-networks), ``replay`` (replay buffer),
``dqn`` (Double DQN and its trainer), ``evaluate`` (returns of the dense and the SAP agent
under FGSM on every observation). RL study files (games -> trained agents -> results store)
are read and run by :mod:`robustact.study` like the image studies. Names are imported lazily,
so ``robustact.rl`` loads without torch or MinAtar
until one is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GAMES": "games", "MinAtarGame": "games", "list_games": "games", "make_game": "games",
    "NETWORKS": "network", "create_q_network": "network", "list_networks": "network",
    "Batch": "replay", "ReplayBuffer": "replay",
    "DQNConfig": "dqn", "DQNResult": "dqn", "double_dqn_targets": "dqn", "dqn_loss": "dqn",
    "epsilon_at": "dqn", "hard_update": "dqn", "load_agent": "dqn", "soft_update": "dqn",
    "train_dqn": "dqn", "update_target": "dqn",
    "AgentReturns": "evaluate", "evaluate_agents": "evaluate", "fgsm_observations": "evaluate",
    "greedy_actions": "evaluate", "play_episodes": "evaluate", "relative_change": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robustact.rl' has no attribute {name!r}")
    return getattr(importlib.import_module(f"robustact.rl.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
