"""Experience replay: a fixed-capacity circular buffer of transitions, sampled uniformly.

Observations are stored as uint8 (MinAtar's 0/1 channels; 1 byte per entry), both the state and
the next state of each transition (simple and exact at the price of twice the memory:
100,000 transitions of a 10-channel game take 2 x 100 MB). When full, each new transition
overwrites the oldest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robustact.errors import ConfigError


@dataclass
class Batch:
    """A sampled minibatch, as tensors on the requested device.

    Shapes and dtypes: ``obs`` and ``next_obs`` float32 (B, C, H, W) in [0, 1]; ``actions``
    int64 (B,); ``rewards`` float32 (B,); ``dones`` float32 (B,), 1.0 where the episode ended
    (no bootstrapping from ``next_obs``).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor


class ReplayBuffer:
    """Circular replay buffer (see the module docstring).

    Args:
        capacity: most transitions kept.
        obs_shape: shape of one observation, e.g. (C, 10, 10).
        seed: seeds the sampling RNG (numpy PCG64).

    Attributes: ``capacity``, ``size`` (transitions held), ``position`` (the slot the next
    transition goes to), and the storage arrays ``obs``, ``actions``, ``rewards``,
    ``next_obs``, ``dones``.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], *, seed: int | None = None
                 ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"replay capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.obs = np.zeros((capacity, *self.obs_shape), dtype=np.uint8)
        self.next_obs = np.zeros((capacity, *self.obs_shape), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.bool_)
        self.size = 0
        self.position = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
            done: bool) -> None:
        """Store one transition, overwriting the oldest when the buffer is full."""
        if obs.shape != self.obs_shape or next_obs.shape != self.obs_shape:
            raise ConfigError(f"replay buffer holds observations of shape {self.obs_shape}, got "
                              f"{tuple(obs.shape)} and {tuple(next_obs.shape)}")
        i = self.position
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.dones[i] = done
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """``batch_size`` slot indices drawn uniformly with replacement from the stored ones."""
        if self.size == 0:
            raise ConfigError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        return self.rng.integers(0, self.size, size=batch_size)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        """A uniform minibatch of stored transitions (see :class:`Batch`)."""
        index = self.sample_indices(batch_size)
        return self.gather(index, device)

    def gather(self, index: np.ndarray, device: torch.device | str = "cpu") -> Batch:
        """The transitions in slots ``index`` as a :class:`Batch`."""
        def images(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a[index]).to(device=device, dtype=torch.float32)

        return Batch(
            obs=images(self.obs),
            actions=torch.from_numpy(self.actions[index]).to(device),
            rewards=torch.from_numpy(self.rewards[index]).to(device),
            next_obs=images(self.next_obs),
            dones=torch.from_numpy(self.dones[index].astype(np.float32)).to(device),
        )
