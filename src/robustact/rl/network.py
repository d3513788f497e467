"""Q-networks for 10x10 MinAtar observations; inputs (B, C, 10, 10) in [0, 1], outputs the
Q-values (B, actions). Every nonlinearity is an ``nn.ReLU`` module, so
:func:`robustact.defenses.apply_sap` puts SAP after each of them.

====== ================================================================================
minatar the MinAtar paper's DQN (Young & Tian 2019; the default): conv 16 3x3 stride 1 -> ReLU
       -> dense 128 -> ReLU -> actions. Two SAP sites of 16*8*8 = 1024 and 128 units.
nature the SAP paper's (Mnih et al. 2015) network, seed 004 appendix A, scaled to 10x10
       inputs: its three convolutions (32, 64, 64 filters) keep their widths, with 3x3
       kernels at stride 1 instead of 8x8/4, 4x4/2, 3x3/1 (an 84x84 stride pattern would
       leave nothing of a 10x10 image), then dense 512 -> ReLU -> actions. Four SAP sites.
====== ================================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robustact.errors import ConfigError


def minatar_net(in_channels: int, num_actions: int) -> nn.Sequential:
    """The MinAtar paper's Q-network (see the module docstring)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 128), nn.ReLU(),
        nn.Linear(128, num_actions),
    )


def nature_net(in_channels: int, num_actions: int) -> nn.Sequential:
    """The seed's (Nature DQN) Q-network scaled to 10x10 inputs (see the module docstring)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, stride=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 512), nn.ReLU(),
        nn.Linear(512, num_actions),
    )


NETWORKS: dict[str, Callable[[int, int], nn.Module]] = {"minatar": minatar_net,
                                                        "nature": nature_net}


def list_networks() -> list[str]:
    return sorted(NETWORKS)


def create_q_network(name: str, in_channels: int, num_actions: int) -> nn.Module:
    """Q-network ``name`` for (B, in_channels, 10, 10) inputs and ``num_actions`` outputs."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown Q-network {name!r}; valid names: "
                          f"{', '.join(list_networks())}")
    if in_channels < 1 or num_actions < 1:
        raise ConfigError(f"a Q-network needs >= 1 input channel and >= 1 action, got "
                          f"{in_channels} and {num_actions}")
    return NETWORKS[name](int(in_channels), int(num_actions))
