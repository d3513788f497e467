"""MinAtar games (Young & Tian 2019): miniature Atari games with 10x10 observations.

``make_game("breakout", seed=0)`` returns a :class:`MinAtarGame`, a thin wrapper around
``minatar.Environment`` that speaks tensors' language: observations are ``uint8`` arrays
(C, 10, 10) of 0/1 (the game's bool channels, channels first, i.e. an image in [0, 1] once cast
to float), actions are indices into the game's *minimal* action set (``game.actions`` lists the
MinAtar action numbers; ``minimal_actions=False`` gives all six), and :meth:`MinAtarGame.step`
returns ``(observation, reward, terminal)``.

MinAtar's own defaults are kept: sticky actions with probability 0.1 (the previous action is
repeated) and difficulty ramping. The package is imported lazily, so the rest of robustact
works without it; without it :func:`make_game` raises a one-line :class:`ConfigError` saying
how to install it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from robustact.errors import ConfigError

#: robustact game name -> MinAtar module name
GAMES = {
    "asterix": "asterix",
    "breakout": "breakout",
    "freeway": "freeway",
    "seaquest": "seaquest",
    "space_invaders": "space_invaders",
}
_ALIASES = {"spaceinvaders": "space_invaders", "space-invaders": "space_invaders"}

INSTALL_HINT = "pip install --no-deps minatar==1.0.15 (make setup does it)"


def list_games() -> list[str]:
    """The game names :func:`make_game` accepts, sorted."""
    return sorted(GAMES)


def check_game(name: str) -> str:
    """The canonical game name, or :class:`ConfigError` listing the valid ones."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GAMES:
        raise ConfigError(f"unknown MinAtar game {name!r}; valid names: {', '.join(list_games())}")
    return key


def _import_minatar() -> Any:
    """``minatar.Environment``, imported without the root-logger warning MinAtar emits when
    matplotlib/seaborn (only needed for its GUI) are missing."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        from minatar import Environment
    except ImportError:
        raise ConfigError(f"the MinAtar games need the minatar package: {INSTALL_HINT}") from None
    finally:
        logging.disable(previous)
        for handler in root.handlers[:]:  # its logging.warning() installs a default handler
            if handler not in handlers:
                root.removeHandler(handler)
    return Environment


class MinAtarGame:
    """One MinAtar game instance (see the module docstring).

    Args:
        name: a game of :func:`list_games`.
        seed: seeds the game's own RNG (spawns, sticky actions); None: unseeded.
        sticky_action_prob: probability of repeating the previous action (MinAtar: 0.1).
        ramping: MinAtar's difficulty ramping (on by default, as in MinAtar).
        minimal_actions: act in the game's minimal action set (default) or all six actions.

    Attributes: ``name``, ``obs_shape`` (C, 10, 10), ``num_actions``, ``actions`` (the MinAtar
    action numbers behind the indices).
    """

    def __init__(self, name: str, *, seed: int | None = None, sticky_action_prob: float = 0.1,
                 ramping: bool = True, minimal_actions: bool = True) -> None:
        self.name = check_game(name)
        if not (isinstance(sticky_action_prob, int | float) and 0 <= sticky_action_prob < 1):
            raise ConfigError(f"sticky_action_prob must be in [0, 1), got {sticky_action_prob!r}")
        environment = _import_minatar()
        self.env = environment(GAMES[self.name], sticky_action_prob=float(sticky_action_prob),
                               difficulty_ramping=bool(ramping))
        if seed is not None:
            self.env.seed(int(seed))
            self.env.reset()  # the constructor reset with an unseeded RNG
        self.actions: list[int] = (list(self.env.minimal_action_set()) if minimal_actions
                                   else list(range(self.env.num_actions())))
        h, w, c = self.env.state_shape()
        self.obs_shape = (int(c), int(h), int(w))

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    def observation(self) -> np.ndarray:
        """The current state as uint8 (C, 10, 10) of 0/1."""
        return np.ascontiguousarray(self.env.state().transpose(2, 0, 1), dtype=np.uint8)

    def reset(self) -> np.ndarray:
        """Start a new episode; returns its first observation."""
        self.env.reset()
        return self.observation()

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """Play action index ``action``; returns (observation, reward, terminal)."""
        if not 0 <= action < len(self.actions):
            raise ConfigError(f"{self.name}: action index must be in [0, {len(self.actions)}), "
                              f"got {action}")
        reward, terminal = self.env.act(self.actions[int(action)])
        return self.observation(), float(reward), bool(terminal)

    def __repr__(self) -> str:
        return f"MinAtarGame({self.name!r}, actions={self.actions})"


def make_game(name: str, *, seed: int | None = None, **kwargs: Any) -> MinAtarGame:
    """A :class:`MinAtarGame` (keyword arguments as its constructor)."""
    return MinAtarGame(name, seed=seed, **kwargs)
