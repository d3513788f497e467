"""Train Double-DQN agents (van Hasselt, Guez, Silver 2016) on MinAtar: the trainer, its pieces.

The pieces are plain functions, tested against brute-force statements of them:

- :func:`double_dqn_targets`: ``y = r + gamma (1 - done) Q_target(s', argmax_a Q_online(s', a))``
  (the online network picks the next action, the target network values it).
- :func:`dqn_loss`: Huber loss (``delta`` 1 by default) between ``Q_online(s, a)`` and y.
- :func:`hard_update` / :func:`soft_update` / :func:`update_target`: the target network is a
  copy of the online one every ``target_update`` *parameter updates*, or, with ``tau`` set,
  follows it by Polyak averaging ``theta' <- tau theta + (1 - tau) theta'`` after every update.
- :func:`epsilon_at`: epsilon-greedy exploration, 1 while the replay buffer warms up
  (``replay_start`` frames), then linear from ``eps_start`` to ``eps_end`` over ``eps_frames``
  frames and constant after.

:func:`train_dqn` runs them: one environment frame per step, a minibatch update every
``train_every`` frames once the buffer holds ``replay_start`` transitions. Defaults follow the
MinAtar paper's DQN (replay 100k, batch 32, gamma 0.99, target copy every 1000 updates, epsilon
1 -> 0.1 over the first 100k frames, Huber loss, an update every frame), except the optimiser:
Adam (lr 1e-4) by default, which learns faster on the small budgets a CPU allows; ``optimizer:
rmsprop`` is the paper's (lr 2.5e-4, squared-gradient momentum 0.95, centered, eps 0.01, as
DeepMind's RMSProp that both the MinAtar and the SAP paper use). The SAP paper (seed 004,
appendix A) trained 100M frames with replay 1M, target updates every 10k steps, an update every
4 frames and epsilon annealed over 1M frames: set ``frames``, ``replay_size``,
``target_update``, ``train_every`` and ``eps_frames`` for that.

Files in ``out`` (default ``runs/rl/<game>``): ``checkpoint.pt`` (online and target weights,
optimiser, counters, the training history; every ``checkpoint_every`` frames and at the end),
``metrics.jsonl`` (one row per ``log_every`` frames) and ``summary.json`` (the configuration
hash, the final counters) once training finished. ``resume=True`` continues from the
checkpoint: weights, optimiser, frame and update counters and the epsilon schedule carry on;
the replay buffer is not saved (it would be 100s of MB), so it is refilled for ``replay_start``
frames with the current policy before updates resume.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustact.errors import CheckpointError, ConfigError
from robustact.options import OptionsMixin
from robustact.rl.games import MinAtarGame, check_game
from robustact.rl.network import create_q_network, list_networks
from robustact.rl.replay import Batch, ReplayBuffer

OPTIMIZERS = ("adam", "rmsprop")
CHECKPOINT_KIND = "robustact-dqn"
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class DQNConfig(OptionsMixin):
    """Every option of a Double-DQN run (units in the comments; frames = environment steps).
    :meth:`hash` covers what determines the trained weights (not where they go)."""

    OPTIONS_WHAT = "DQN"
    UNHASHED = frozenset({"out", "progress", "device", "log_every", "checkpoint_every"})

    game: str = "breakout"
    network: str = "minatar"          # robustact.rl.network: minatar | nature
    frames: int = 200_000             # environment frames to train for
    batch_size: int = 32
    optimizer: str = "adam"           # adam | rmsprop (the papers')
    lr: float | None = None           # default 1e-4 (adam), 2.5e-4 (rmsprop)
    gamma: float = 0.99               # discount
    replay_size: int = 100_000        # transitions kept
    replay_start: int = 5_000         # frames of uniform-random play before updates start
    train_every: int = 1              # frames between parameter updates
    target_update: int = 1_000        # parameter updates between hard target copies
    tau: float | None = None          # Polyak rate per update instead of hard copies
    eps_start: float = 1.0
    eps_end: float = 0.1
    eps_frames: int = 100_000         # frames of linear annealing after replay_start
    huber_delta: float = 1.0
    grad_clip: float | None = None    # max gradient norm (None: no clipping)
    sticky_action_prob: float = 0.1   # MinAtar's default
    ramping: bool = True              # MinAtar's difficulty ramping
    minimal_actions: bool = True      # act in the game's minimal action set
    max_episode_frames: int | None = 10_000  # truncate longer episodes (no terminal flag)
    log_every: int = 10_000           # frames between metrics rows
    checkpoint_every: int = 50_000    # frames between checkpoints
    seed: int = 0
    device: str = "auto"
    out: str | None = None            # default runs/rl/<game>
    progress: bool = True

    def __post_init__(self) -> None:
        self.game = check_game(self.game)
        if self.network not in list_networks():
            raise ConfigError(f"unknown Q-network {self.network!r}; valid names: "
                              f"{', '.join(list_networks())}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be adam or rmsprop, got {self.optimizer!r}")
        for name in ("frames", "batch_size", "replay_size", "train_every", "target_update",
                     "log_every", "checkpoint_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("replay_start", "eps_frames"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.max_episode_frames is not None:
            _check_int("max_episode_frames", self.max_episode_frames, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.replay_start > self.replay_size:
            raise ConfigError(f"replay_start ({self.replay_start}) cannot exceed replay_size "
                              f"({self.replay_size})")
        if self.lr is None:
            self.lr = 1e-4 if self.optimizer == "adam" else 2.5e-4
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("gamma", self.gamma, low=0.0, high=1.0)
        _check_number("eps_start", self.eps_start, low=0.0, high=1.0)
        _check_number("eps_end", self.eps_end, low=0.0, high=1.0)
        _check_number("huber_delta", self.huber_delta, low=0.0, low_open=True)
        _check_number("sticky_action_prob", self.sticky_action_prob, low=0.0, high=1.0)
        if self.tau is not None:
            _check_number("tau", self.tau, low=0.0, high=1.0, low_open=True)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.out is None:
            self.out = f"runs/rl/{self.game}"



def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, *, low: float, high: float = math.inf,
                  low_open: bool = False) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (value > low if low_open else value >= low)
          and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")


# --- the pieces ------------------------------------------------------------------------------


def epsilon_at(frame: int, config: DQNConfig) -> float:
    """Exploration rate at environment frame ``frame`` (0-based; see the module docstring)."""
    if frame < config.replay_start:
        return 1.0
    if config.eps_frames == 0:
        return config.eps_end
    progress = min(1.0, (frame - config.replay_start) / config.eps_frames)
    return config.eps_start + progress * (config.eps_end - config.eps_start)


@torch.no_grad()
def double_dqn_targets(online: nn.Module, target: nn.Module, rewards: torch.Tensor,
                       next_obs: torch.Tensor, dones: torch.Tensor,
                       gamma: float) -> torch.Tensor:
    """Double-DQN targets ``r + gamma (1 - done) Q_target(s', argmax_a Q_online(s', a))``.

    Shapes: rewards, dones (B,) float; next_obs (B, C, H, W); output (B,), no gradient.
    """
    next_actions = online(next_obs).argmax(1, keepdim=True)
    next_values = target(next_obs).gather(1, next_actions).squeeze(1)
    return rewards + gamma * (1.0 - dones) * next_values


def dqn_loss(online: nn.Module, target: nn.Module, batch: Batch, *, gamma: float,
             huber_delta: float = 1.0) -> torch.Tensor:
    """Mean Huber loss between ``Q_online(s, a)`` and the Double-DQN targets (a scalar)."""
    q = online(batch.obs).gather(1, batch.actions.view(-1, 1)).squeeze(1)
    y = double_dqn_targets(online, target, batch.rewards, batch.next_obs, batch.dones, gamma)
    return nn.functional.huber_loss(q, y, delta=huber_delta)


@torch.no_grad()
def hard_update(target: nn.Module, online: nn.Module) -> None:
    """Copy the online network's parameters and buffers into the target network."""
    target.load_state_dict(online.state_dict())


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging: ``theta' <- tau theta + (1 - tau) theta'`` for every parameter."""
    for p_target, p_online in zip(target.parameters(), online.parameters(), strict=True):
        p_target.lerp_(p_online, tau)


def update_target(target: nn.Module, online: nn.Module, updates: int, *, every: int,
                  tau: float | None = None) -> bool:
    """Call after parameter update number ``updates`` (1-based): Polyak with ``tau`` if given,
    else a hard copy when ``updates`` is a multiple of ``every``. Returns whether the target
    changed."""
    if tau is not None:
        soft_update(target, online, tau)
        return True
    if updates % every == 0:
        hard_update(target, online)
        return True
    return False


def make_optimizer(config: DQNConfig, params: Any) -> torch.optim.Optimizer:
    """Adam, or DeepMind-style RMSProp (squared-gradient momentum 0.95, centered, eps 0.01)."""
    assert config.lr is not None
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.RMSprop(params, lr=config.lr, alpha=0.95, centered=True, eps=0.01)


# --- training --------------------------------------------------------------------------------


@dataclass
class DQNResult:
    """What :func:`train_dqn` returns: where the checkpoint is, the counters, the history
    (one row per ``log_every`` frames) and the returns of every training episode."""

    checkpoint: Path
    frames: int
    updates: int
    episodes: int
    history: list[dict[str, Any]] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    seconds: float = 0.0


def agent_meta(config: DQNConfig, game: MinAtarGame) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its Q-network and game."""
    return {"kind": CHECKPOINT_KIND, "game": game.name, "network": config.network,
            "obs_shape": list(game.obs_shape), "num_actions": game.num_actions,
            "actions": list(game.actions)}


def train_dqn(config: DQNConfig, *, resume: bool = False,
              log: Callable[[str], None] = print) -> DQNResult:
    """Train a Double-DQN agent (see the module docstring); returns a :class:`DQNResult`."""
    from robustact.device import select_device

    device = select_device(config.device)
    out = Path(str(config.out))
    ckpt = _checkpoint_to_resume(out, config, resume, log)
    run = _set_up(config, device, out, ckpt, log)
    run.out.mkdir(parents=True, exist_ok=True)
    run.metrics.write_text("".join(json.dumps(row) + "\n" for row in run.history))
    bar = _start_play(run)
    try:
        for frame in range(run.start, config.frames):
            _frame(run, frame, bar)
    finally:
        bar.close()
    return _finish(run, log)


@dataclass
class _Run:
    """A DQN training run in progress: its pieces, counters and the episode being played."""

    config: DQNConfig
    device: torch.device
    out: Path
    start: int                        # the frame training (re)starts at
    game: MinAtarGame
    online: nn.Module
    target: nn.Module
    optimizer: torch.optim.Optimizer
    buffer: ReplayBuffer
    rng: np.random.Generator          # exploration
    updates: int
    history: list[dict[str, Any]]
    returns: list[float]              # of every finished training episode
    obs: np.ndarray | None = None
    episode_return: float = 0.0
    episode_frames: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    losses: list[float] = field(default_factory=list)  # since the last metrics row
    began: float = 0.0
    last_log: int = 0
    last_time: float = 0.0

    @property
    def path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"


def _checkpoint_to_resume(out: Path, config: DQNConfig, resume: bool,
                          log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint in ``out`` to continue, checked to fit ``config``; None to start afresh."""
    path = out / CHECKPOINT_NAME
    if not resume:
        return None
    if not path.exists():
        log(f"no checkpoint in {out}; starting afresh")
        return None
    ckpt = load_agent_checkpoint(path)
    if ckpt["config"].get("game") != config.game:
        raise CheckpointError(f"{path} is an agent for {ckpt['config'].get('game')}, not "
                              f"{config.game}; use another --out")
    _check_resumable(ckpt, config, path)
    return ckpt


def _set_up(config: DQNConfig, device: torch.device, out: Path, ckpt: dict[str, Any] | None,
            log: Callable[[str], None]) -> _Run:
    """Seed, game, online and target networks, optimizer (restored from ``ckpt``), replay
    buffer and exploration RNG, in this (RNG) order."""
    start = int(ckpt["frames"]) if ckpt else 0
    torch.manual_seed(config.seed)
    game = MinAtarGame(config.game, seed=config.seed + start,
                       sticky_action_prob=config.sticky_action_prob, ramping=config.ramping,
                       minimal_actions=config.minimal_actions)
    online = create_q_network(config.network, game.obs_shape[0], game.num_actions).to(device)
    target = create_q_network(config.network, game.obs_shape[0], game.num_actions).to(device)
    optimizer = make_optimizer(config, online.parameters())
    updates, history, returns = _restore(ckpt, config, online, target, optimizer, log)
    target.eval()
    buffer = ReplayBuffer(config.replay_size, game.obs_shape, seed=config.seed + 1 + start)
    rng = np.random.default_rng(config.seed + 2 + start)
    return _Run(config, device, out, start, game, online, target, optimizer, buffer, rng,
                updates, history, returns)


def _restore(ckpt: dict[str, Any] | None, config: DQNConfig, online: nn.Module,
             target: nn.Module, optimizer: torch.optim.Optimizer,
             log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]], list[float]]:
    """Weights, optimizer, update count, history and episode returns from ``ckpt``; afresh
    (the target a copy of the online network) without one."""
    if ckpt is None:
        hard_update(target, online)
        return 0, [], []
    online.load_state_dict(ckpt["model_state"])
    target.load_state_dict(ckpt["target_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    updates, history = int(ckpt["updates"]), list(ckpt["history"])
    returns = [float(r) for r in ckpt["episode_returns"]]
    log(f"resuming {config.game} at frame {int(ckpt['frames'])} ({updates} updates); the "
        f"replay buffer refills for {config.replay_start} frames")
    return updates, history, returns


def _start_play(run: _Run) -> Any:
    """Start the clock and the first episode; the progress bar."""
    from tqdm.auto import tqdm

    run.began = time.perf_counter()
    run.obs, run.episode_return, run.episode_frames = run.game.reset(), 0.0, 0
    run.recent.extend(run.returns[-100:])
    run.last_log, run.last_time = run.start, run.began
    return tqdm(total=run.config.frames, initial=run.start, unit="frame",
                disable=not run.config.progress, desc=run.config.game, mininterval=1.0)


def _frame(run: _Run, frame: int, bar: Any) -> None:
    """Frame ``frame`` (0-based): act, store the transition, learn; then log, checkpoint and
    advance the bar when due."""
    config = run.config
    epsilon = epsilon_at(frame, config)
    _play(run, _act(run, epsilon))
    done = frame + 1
    if len(run.buffer) >= max(1, config.replay_start) and done % config.train_every == 0:
        _learn(run)
    if done % config.log_every == 0 or done == config.frames:
        _log_row(run, done, epsilon, bar)
    if done % config.checkpoint_every == 0 and done != config.frames:
        _save(run, done)
    if done % 1000 == 0 or done == config.frames:
        bar.update(done - bar.n)


def _act(run: _Run, epsilon: float) -> int:
    """Epsilon-greedy action on the current observation."""
    if run.rng.random() < epsilon:
        return int(run.rng.integers(run.game.num_actions))
    with torch.no_grad():
        x = torch.from_numpy(run.obs).to(device=run.device, dtype=torch.float32)
        return int(run.online(x.unsqueeze(0)).argmax(1).item())


def _play(run: _Run, action: int) -> None:
    """One game step: store the transition; an ended (or truncated) episode starts afresh."""
    next_obs, reward, terminal = run.game.step(action)
    run.buffer.add(run.obs, action, reward, next_obs, terminal)
    run.episode_return += reward
    run.episode_frames += 1
    run.obs = next_obs
    limit = run.config.max_episode_frames
    if terminal or (limit is not None and run.episode_frames >= limit):
        run.returns.append(run.episode_return)
        run.recent.append(run.episode_return)
        run.obs, run.episode_return, run.episode_frames = run.game.reset(), 0.0, 0


def _learn(run: _Run) -> None:
    """One parameter update on a replay minibatch, then the target network's update."""
    config = run.config
    loss = dqn_loss(run.online, run.target, run.buffer.sample(config.batch_size, run.device),
                    gamma=config.gamma, huber_delta=config.huber_delta)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.online.parameters(), config.grad_clip)
    run.optimizer.step()
    run.updates += 1
    update_target(run.target, run.online, run.updates, every=config.target_update,
                  tau=config.tau)
    run.losses.append(loss.item())


def _log_row(run: _Run, done: int, epsilon: float, bar: Any) -> None:
    """Append the metrics row after ``done`` frames to the history and ``metrics.jsonl``."""
    now = time.perf_counter()
    recent, losses = run.recent, run.losses
    row = {"epoch": len(run.history), "frames": done, "updates": run.updates,
           "episodes": len(run.returns),
           "return_mean": float(np.mean(recent)) if recent else None,
           "epsilon": round(epsilon, 6),
           "train_loss": float(np.mean(losses)) if losses else None,
           "seconds": round(now - run.began, 2),
           "fps": round((done - run.last_log) / max(now - run.last_time, 1e-9), 1)}
    run.history.append(row)
    with run.metrics.open("a") as f:
        f.write(json.dumps(row) + "\n")
    losses.clear()
    run.last_log, run.last_time = done, now
    bar.set_postfix(ret=f"{row['return_mean'] or 0:.2f}", eps=f"{epsilon:.2f}", refresh=False)


def _save(run: _Run, frame: int) -> None:
    """The checkpoint after ``frame`` frames (everything but the replay buffer)."""
    from robustact.train.checkpoint import save_atomic

    config = run.config
    save_atomic({**agent_meta(config, run.game), "config": config.to_dict(),
                 "config_hash": config.hash(), "model_state": run.online.state_dict(),
                 "target_state": run.target.state_dict(),
                 "optimizer_state": run.optimizer.state_dict(), "frames": frame,
                 "updates": run.updates, "episodes": len(run.returns), "history": run.history,
                 "episode_returns": run.returns}, run.path)


def _finish(run: _Run, log: Callable[[str], None]) -> DQNResult:
    """The final checkpoint, ``summary.json`` and the closing log line; the result."""
    config, returns, updates = run.config, run.returns, run.updates
    _save(run, config.frames)
    seconds = time.perf_counter() - run.began
    summary = {"config_hash": config.hash(), "game": config.game, "frames": config.frames,
               "updates": updates, "episodes": len(returns),
               "return_mean_last100": float(np.mean(returns[-100:])) if returns else None,
               "seconds": round(seconds, 1)}
    (run.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"{config.game}: {config.frames} frames, {updates} updates, {len(returns)} episodes, "
        f"mean return of the last 100 training episodes {summary['return_mean_last100']}, "
        f"{seconds:.0f} s; checkpoint {run.path}")
    return DQNResult(run.path, config.frames, updates, len(returns), history=run.history,
                     episode_returns=returns, seconds=seconds)


def _check_resumable(ckpt: dict[str, Any], config: DQNConfig, path: Path) -> None:
    """A resumed run must continue the same training: same options apart from ``frames`` (and
    where and how it reports), and fewer frames done than asked for."""
    free = {"frames", "out", "progress", "device", "log_every", "checkpoint_every"}
    saved = ckpt["config"]
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in free and saved.get(k) != v)
    if changed:
        raise CheckpointError(f"cannot resume {path}: it was trained with other "
                              f"{', '.join(changed)}; use another --out or the same options")
    if int(ckpt["frames"]) >= config.frames:
        raise CheckpointError(f"{path} has already {ckpt['frames']} frames; give more --frames "
                              "to continue it")


# --- loading ---------------------------------------------------------------------------------


def load_agent_checkpoint(path: str | Path) -> dict[str, Any]:
    """A DQN checkpoint (a run directory or its checkpoint.pt) as a dict, validated."""
    from robustact.train.checkpoint import load_checkpoint

    if not Path(path).exists():
        raise CheckpointError(f"agent checkpoint {path} not found; train one with "
                              "`robustact rl train`")
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a robustact DQN agent checkpoint; train one with "
                              "`robustact rl train`")
    return ckpt


def load_agent(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The trained Q-network (eval mode, on ``device``) and its checkpoint dict."""
    from robustact.device import select_device

    ckpt = load_agent_checkpoint(path)
    model = create_q_network(ckpt["network"], int(ckpt["obs_shape"][0]),
                             int(ckpt["num_actions"]))
    model.load_state_dict(ckpt["model_state"])
    return model.to(select_device(device)).eval(), ckpt
