"""Returns of a trained DQN agent, dense and with SAP, when every observation is attacked.

The SAP paper's RL experiment (seed 004, section 4.2, Table 1): a trained DDQN agent plays
with SAP-100 applied post hoc to the ReLU activations of its Q-network; before each action the
adversary perturbs the observation with FGSM at strength lambda; the table gives the relative
change in average reward of SAP-100 over the original (dense) agent at each lambda,
``100 (R_SAP - R_dense) / |R_dense|`` (:func:`relative_change`), both agents under their own
attack at the same lambda.

Choices, as the paper leaves them open or as MinAtar requires:

- **observation**: MinAtar's 0/1 channels as a float image in [0, 1]; lambda (``eps``) is on
  that scale, the perturbed observation is clipped to [0, 1] (so a pixel at 0 can only rise, a
  pixel at 1 only fall). While lambda < 0.5, rounding the perturbed observation recovers the
  true state: the attack changes what the network sees, not the game.
- **attack loss**: the cross-entropy between the Q-values taken as logits and the agent's own
  greedy action on the clean observation (Huang et al. 2017's FGSM on policies); its gradient
  sign pushes the observation away from that action. One step (:class:`robustact.attacks.FGSM`),
  the action read from the same forward pass as the gradient (for the SAP agent: the argmax
  of the ``mc_samples``-pass average, the attacker's own estimate of its action).
- **the SAP agent** acts greedily on its Q-values averaged over ``samples`` stochastic passes
  (the paper: "the output of stochastic models are computed as an average over multiple
  forward passes"), and is attacked through the same average: the gradient of the loss of the
  averaged Q-values, i.e. Monte-Carlo (EOT) gradients over ``mc_samples`` passes
  (:class:`robustact.attacks.EOT`; the paper used 100 MC samples).
- **episodes**: ``episodes`` games played in lockstep (one batched forward per frame), game i
  seeded with ``seed + i`` for every agent and lambda (common random numbers: the agents
  meet the same game seeds); greedy play (``epsilon`` 0) apart from MinAtar's sticky actions;
  an episode is cut after ``max_frames`` frames (counted in ``truncated``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.rl.games import MinAtarGame

DENSE = "dense"


@dataclass
class AgentReturns:
    """The returns of one agent at one attack strength.

    Attributes:
        agent: ``"dense"`` or ``"sap-100"`` (``sap-<100 frac>``).
        eps: FGSM lambda on the [0, 1] observation scale (0: no attack).
        returns: one undiscounted return per episode.
        frames: each episode's length in frames.
        truncated: episodes cut at ``max_frames``.
        seconds: wall time of the evaluation.
        params: how it was evaluated (samples, mc_samples, seed, epsilon, max_frames, game).
    """

    agent: str
    eps: float
    returns: list[float]
    frames: list[int]
    truncated: int = 0
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan

    @property
    def stderr(self) -> float:
        """Standard error of the mean return (nan with fewer than 2 episodes)."""
        if len(self.returns) < 2:
            return math.nan
        return float(np.std(self.returns, ddof=1) / math.sqrt(len(self.returns)))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "stderr": self.stderr}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentReturns:
        names = {"agent", "eps", "returns", "frames", "truncated", "seconds", "params"}
        return cls(**{k: v for k, v in data.items() if k in names})


def relative_change(r_sap: float, r_dense: float) -> float:
    """Relative change of the reward in percent, ``100 (r_sap - r_dense) / |r_dense|`` (seed
    004, Table 1: "relative percentage increase in rewards of SAP-100 as compared to the
    original model"); nan when ``r_dense`` is 0 (undefined)."""
    if r_dense == 0 or math.isnan(r_dense) or math.isnan(r_sap):
        return math.nan
    return 100.0 * (r_sap - r_dense) / abs(r_dense)


def relative_changes(rows: Sequence[AgentReturns], agent: str,
                     eps_values: Sequence[float]) -> list[float]:
    """Per lambda of ``eps_values``, :func:`relative_change` of ``agent``'s mean return over
    the dense agent's in ``rows`` (nan where either is missing or undefined)."""
    mean = {(r.agent, r.eps): r.mean for r in rows}
    return [math.nan if (agent, e) not in mean or (DENSE, e) not in mean
            else relative_change(mean[(agent, e)], mean[(DENSE, e)]) for e in eps_values]


def sap_agent_name(frac: float) -> str:
    """``1.0`` -> ``"sap-100"``."""
    return f"sap-{100 * frac:g}"


@torch.no_grad()
def greedy_actions(model: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """argmax_a Q(obs, a) per row: (B, C, H, W) -> int64 (B,)."""
    return model(obs).argmax(1)


def greedy_cross_entropy(q_values: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    """(B,) cross-entropy of the Q-values (as logits) against their own argmax: the attack
    loss that needs no label, read from the same forward as its gradient (labels ignored)."""
    return nn.functional.cross_entropy(q_values.float(), q_values.detach().argmax(1),
                                       reduction="none")


def fgsm_observations(model: nn.Module, obs: torch.Tensor, eps: float,
                      actions: torch.Tensor | None = None) -> torch.Tensor:
    """FGSM on observations (B, C, H, W) in [0, 1]: one signed step of ``eps`` up the
    cross-entropy of the Q-values (as logits) against ``actions``, or, by default, against the
    greedy actions of ``model`` in the same forward pass (one forward instead of two: for an
    :class:`robustact.attacks.EOT` wrapper, the averaged Q-values give both the action and
    the Monte-Carlo gradient). The result is clipped to the eps-ball and [0, 1]."""
    from robustact.attacks import FGSM

    _check_eps(eps)
    if obs.min() < 0 or obs.max() > 1:
        raise ConfigError("observations must be in [0, 1] before the attack")
    if eps == 0:
        return obs.clone()
    # perturb: no reseeding of the global RNG (SAP's draws go on), no extra judging forward
    attack = FGSM(eps=float(eps), loss="ce", seed=None)
    if actions is None:
        attack.loss_fn = greedy_cross_entropy
        actions = torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device)
    return attack.perturb(model, obs, actions)


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps <= 1:
        raise ConfigError(f"FGSM lambda must be in [0, 1] on the observation scale, got "
                          f"{eps!r}")


def play_episodes(policy: nn.Module, game: str, *, episodes: int, eps: float = 0.0,
                  attack_model: nn.Module | None = None, seed: int = 0, epsilon: float = 0.0,
                  max_frames: int = 10_000, game_kwargs: dict[str, Any] | None = None,
                  device: torch.device | str = "cpu", agent: str = DENSE,
                  progress: Callable[[int], None] | None = None) -> AgentReturns:
    """Play ``episodes`` episodes of ``game`` in lockstep with the greedy policy of ``policy``
    on FGSM-perturbed observations (see the module docstring).

    Args:
        policy: Q-network (or EOT wrapper) choosing the actions: argmax of its output.
        eps: FGSM lambda on the [0, 1] scale; 0 plays on clean observations.
        attack_model: the model whose gradient the attack follows (default ``policy``).
        seed: game i is seeded with ``seed + i``; torch's global RNG (SAP's draws) and the
            epsilon-greedy draws are seeded with ``seed`` too.
        epsilon: probability of a uniformly random action (0: greedy).
        max_frames: frames after which an episode is cut.
        game_kwargs: :class:`MinAtarGame` options (sticky_action_prob, ramping, ...).
        progress: called with the number of frames played at each frame.
    """
    _check_eps(eps)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
    if not 0 <= epsilon <= 1:
        raise ConfigError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ConfigError(f"max_frames must be a positive integer, got {max_frames!r}")
    attack_model = policy if attack_model is None else attack_model
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    games = [MinAtarGame(game, seed=seed + i, **(game_kwargs or {})) for i in range(episodes)]
    obs = [g.reset() for g in games]
    returns = [0.0] * episodes
    lengths = [0] * episodes
    active = list(range(episodes))
    truncated = 0
    while active:
        x = torch.from_numpy(np.stack([obs[i] for i in active])).to(device, torch.float32)
        if eps > 0:
            x = fgsm_observations(attack_model, x, eps)
        actions = greedy_actions(policy, x).tolist()
        still = []
        for i, action in zip(active, actions, strict=True):
            g = games[i]
            if epsilon > 0 and rng.random() < epsilon:
                action = int(rng.integers(g.num_actions))
            obs[i], reward, terminal = g.step(int(action))
            returns[i] += reward
            lengths[i] += 1
            if terminal or lengths[i] >= max_frames:
                truncated += int(not terminal)
            else:
                still.append(i)
        active = still
        if progress is not None:
            progress(len(actions))
    params = {"game": games[0].name, "seed": seed, "epsilon": epsilon, "max_frames": max_frames,
              "attack": "fgsm", "loss": "ce(greedy action)", **(game_kwargs or {})}
    return AgentReturns(agent, float(eps), returns, lengths, truncated,
                        round(time.perf_counter() - start, 2), params)


def evaluate_agents(model: nn.Module, checkpoint: dict[str, Any], eps_list: Sequence[float], *,
                    episodes: int = 10, sap_frac: float | None = 1.0, samples: int = 100,
                    mc_samples: int | None = None, seed: int = 0, epsilon: float = 0.0,
                    max_frames: int = 10_000, device: torch.device | str = "cpu",
                    progress: Callable[[str, int], None] | None = None,
                    ) -> list[AgentReturns]:
    """The dense agent and (unless ``sap_frac`` is None) the agent with SAP on its Q-network,
    each at every lambda of ``eps_list`` (see the module docstring).

    Args:
        model: the trained Q-network (not modified: SAP goes on a copy).
        checkpoint: its checkpoint dict (:func:`robustact.rl.load_agent`), for the game and its
            settings.
        sap_frac: SAP draws per map as a fraction of its units (1.0 = SAP-100).
        samples: stochastic passes averaged for the SAP agent's Q-values (its actions).
        mc_samples: passes averaged for the attack's gradient on the SAP agent (default
            ``samples``).
        progress: called with (agent label, frames played) as the games go.

    Returns one :class:`AgentReturns` per agent and lambda, dense first.
    """
    eps_values = [float(e) for e in eps_list]
    for e in eps_values:
        _check_eps(e)
    if not eps_values:
        raise ConfigError("give at least one FGSM lambda, e.g. 0")
    for name, value in (("samples", samples), ("mc_samples", mc_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    config = checkpoint.get("config") or {}
    game = str(checkpoint["game"])
    game_kwargs = {"sticky_action_prob": config.get("sticky_action_prob", 0.1),
                   "ramping": config.get("ramping", True),
                   "minimal_actions": config.get("minimal_actions", True)}
    rows = []
    for label, policy, attacked, extra in _agents(model.eval(), sap_frac, samples, mc_samples):
        for e in eps_values:
            def tick(frames: int, label: str = label) -> None:
                if progress is not None:
                    progress(label, frames)

            result = play_episodes(policy, game, episodes=episodes, eps=e,
                                   attack_model=attacked, seed=seed, epsilon=epsilon,
                                   max_frames=max_frames, game_kwargs=game_kwargs,
                                   device=device, agent=label, progress=tick)
            result.params.update(extra)
            rows.append(result)
    return rows


def _agents(model: nn.Module, sap_frac: float | None, samples: int,
            mc_samples: int | None) -> list[tuple[str, nn.Module, nn.Module, dict[str, Any]]]:
    """(label, policy, model the attack follows, extra params) of the dense agent and, unless
    ``sap_frac`` is None, of the agent with SAP on a copy of ``model``."""
    from robustact.attacks.wrappers import EOT
    from robustact.defenses import apply_sap

    agents: list[tuple[str, nn.Module, nn.Module, dict[str, Any]]] = [(DENSE, model, model, {})]
    if sap_frac is not None:
        sap_model = apply_sap(copy.deepcopy(model), frac=sap_frac).eval()
        n_grad = samples if mc_samples is None else mc_samples
        wide = 1 << 14  # one forward for the whole replicated batch: small inputs
        agents.append((sap_agent_name(sap_frac), EOT(sap_model, samples, max_batch=wide),
                       EOT(sap_model, n_grad, max_batch=wide),
                       {"sap_frac": sap_frac, "samples": samples, "mc_samples": n_grad}))
    return agents
