"""robustact.rl against independent statements: the replay buffer against a list of what was
stored, the target updates against the parameters, the Double-DQN target against a per-row
brute-force loop, a short Breakout run against a random policy, and the FGSM observations
against the eps-ball and [0, 1]."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("minatar", reason="make setup installs minatar (pip install --no-deps)")

from robustact.attacks.wrappers import EOT  # noqa: E402
from robustact.cli import main  # noqa: E402
from robustact.defenses import SAP, apply_sap  # noqa: E402
from robustact.errors import CheckpointError, ConfigError  # noqa: E402
from robustact.results import ResultsStore  # noqa: E402
from robustact.rl.dqn import (  # noqa: E402
    DQNConfig,
    double_dqn_targets,
    dqn_loss,
    epsilon_at,
    hard_update,
    load_agent,
    soft_update,
    train_dqn,
    update_target,
)
from robustact.rl.evaluate import (  # noqa: E402
    evaluate_agents,
    fgsm_observations,
    play_episodes,
    relative_change,
)
from robustact.rl.games import MinAtarGame, list_games  # noqa: E402
from robustact.rl.network import create_q_network  # noqa: E402
from robustact.rl.replay import ReplayBuffer  # noqa: E402
from robustact.study.rl_config import load_rl_study, parse_eps  # noqa: E402
from robustact.study.runner import run_rl_study  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# A Breakout run that learns in ~10 s on one thread (3 seeds gave greedy returns 2.1-3.1 over
# 20 episodes; a uniformly random policy gets 0.35 on the same game seeds).
QUICK = dict(game="breakout", frames=6000, train_every=2, lr=1e-3, replay_start=500,
             eps_frames=2500, target_update=200, replay_size=20_000, log_every=2000,
             checkpoint_every=10**9, progress=False)


def _observations(game: str = "breakout", n: int = 16, seed: int = 0) -> torch.Tensor:
    """n real observations (float 0/1) from random play."""
    g = MinAtarGame(game, seed=seed)
    rng = np.random.default_rng(seed)
    obs, out = g.reset(), []
    while len(out) < n:
        out.append(obs)
        obs, _, terminal = g.step(int(rng.integers(g.num_actions)))
        if terminal:
            obs = g.reset()
    return torch.from_numpy(np.stack(out)).float()


# --- games and networks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_games())
def test_games_give_binary_channels_first_observations(name: str) -> None:
    game = MinAtarGame(name, seed=3)
    obs = game.reset()
    assert obs.dtype == np.uint8 and obs.shape == game.obs_shape and obs.shape[1:] == (10, 10)
    assert set(np.unique(obs)) <= {0, 1}
    q = create_q_network("minatar", game.obs_shape[0], game.num_actions)
    assert q(torch.from_numpy(obs).float()[None]).shape == (1, game.num_actions)
    # same seed, same actions -> same trajectory
    a, b = MinAtarGame(name, seed=5), MinAtarGame(name, seed=5)
    for t in range(50):
        sa, sb = a.step(t % a.num_actions), b.step(t % b.num_actions)
        assert np.array_equal(sa[0], sb[0]) and sa[1:] == sb[1:]
        if sa[2]:
            break


def test_nature_network_is_the_seed_shape_on_10x10() -> None:
    q = create_q_network("nature", 4, 3)
    convs = [m for m in q if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64]
    assert q(torch.zeros(2, 4, 10, 10)).shape == (2, 3)
    assert sum(isinstance(m, nn.ReLU) for m in q) == 4


# --- replay buffer ---------------------------------------------------------------------------


def _transition(k: int, shape: tuple[int, ...] = (2, 3, 3)) -> tuple:
    """Transition number k: every field encodes k, so a sample can be checked field by field."""
    obs = np.full(shape, k % 2, np.uint8)
    obs[0, 0, 0] = k % 256
    nxt = obs.copy()
    nxt[0, 0, 1] = (k + 1) % 256
    return obs, k % 5, float(k) / 10, nxt, k % 3 == 0


def test_replay_buffer_overwrites_the_oldest_transition() -> None:
    buf = ReplayBuffer(5, (2, 3, 3), seed=0)
    for k in range(8):
        buf.add(*_transition(k))
    assert len(buf) == 5 and buf.position == 3
    # slots 0..2 hold transitions 5, 6, 7 (overwritten), slots 3, 4 still hold 3, 4
    for slot, k in enumerate([5, 6, 7, 3, 4]):
        obs, action, reward, nxt, done = _transition(k)
        assert np.array_equal(buf.obs[slot], obs) and np.array_equal(buf.next_obs[slot], nxt)
        assert buf.actions[slot] == action and buf.rewards[slot] == pytest.approx(reward)
        assert buf.dones[slot] == done


def test_replay_buffer_samples_stored_transitions_with_shapes_and_dtypes() -> None:
    buf = ReplayBuffer(50, (2, 3, 3), seed=1)
    for k in range(30):
        buf.add(*_transition(k))
    batch = buf.sample(200)
    assert batch.obs.shape == batch.next_obs.shape == (200, 2, 3, 3)
    assert batch.obs.dtype == batch.next_obs.dtype == torch.float32
    assert batch.actions.dtype == torch.int64 and batch.actions.shape == (200,)
    assert batch.rewards.dtype == batch.dones.dtype == torch.float32
    assert batch.rewards.shape == batch.dones.shape == (200,)
    seen = set()
    for i in range(200):
        k = int(batch.obs[i, 0, 0, 0])  # the transition's number, stored in its observation
        seen.add(k)
        obs, action, reward, nxt, done = _transition(k)
        assert torch.equal(batch.obs[i], torch.from_numpy(obs).float())
        assert torch.equal(batch.next_obs[i], torch.from_numpy(nxt).float())
        assert int(batch.actions[i]) == action and float(batch.rewards[i]) == pytest.approx(reward)
        assert float(batch.dones[i]) == float(done)
    assert seen <= set(range(30)) and len(seen) > 20  # uniform over the 30 stored


def test_replay_buffer_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="capacity must be a positive integer"):
        ReplayBuffer(0, (1,))
    buf = ReplayBuffer(4, (2, 3, 3))
    with pytest.raises(ConfigError, match="empty replay buffer"):
        buf.sample(1)
    with pytest.raises(ConfigError, match="observations of shape"):
        buf.add(np.zeros((3, 3), np.uint8), 0, 0.0, np.zeros((3, 3), np.uint8), False)


# --- target network, Double-DQN target, schedule --------------------------------------------


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    online, target = create_q_network("minatar", 2, 3), create_q_network("minatar", 2, 3)
    return online, target


def test_hard_target_copy_every_c_updates() -> None:
    online, target = _pair()
    hard_update(target, online)
    every = 4
    for updates in range(1, 9):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(0.01)  # an "optimizer step"
        before = [p.clone() for p in target.parameters()]
        changed = update_target(target, online, updates, every=every)
        assert changed == (updates % every == 0)
        for p_t, p_o, p_b in zip(target.parameters(), online.parameters(), before, strict=True):
            if updates % every == 0:
                assert torch.equal(p_t, p_o)
            else:
                assert torch.equal(p_t, p_b) and not torch.equal(p_t, p_o)


def test_polyak_target_update_against_the_formula() -> None:
    online, target = _pair(1)
    old = [p.clone() for p in target.parameters()]
    soft_update(target, online, 0.1)
    for p_t, p_o, p_old in zip(target.parameters(), online.parameters(), old, strict=True):
        torch.testing.assert_close(p_t, 0.1 * p_o + 0.9 * p_old)
    old = [p.clone() for p in target.parameters()]
    assert update_target(target, online, 7, every=1000, tau=0.5)  # tau: every update
    for p_t, p_o, p_old in zip(target.parameters(), online.parameters(), old, strict=True):
        torch.testing.assert_close(p_t, 0.5 * p_o + 0.5 * p_old)


class _Table(nn.Module):
    """A Q-"network" that looks its values up: state i (encoded in x[:, 0, 0, 0]) -> row i."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def test_double_dqn_target_matches_brute_force() -> None:
    # online and target disagree on the best next action, so Double DQN != max_a Q_target
    online = _Table([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0], [7.0, 7.5, 0.0]])
    target = _Table([[9.0, 0.5, 4.0], [2.0, 8.0, -6.0], [1.0, -2.0, 3.0]])
    states = [0, 1, 2, 1]
    next_obs = torch.zeros(4, 1, 1, 1)
    next_obs[:, 0, 0, 0] = torch.tensor(states, dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, -1.0, 2.0])
    dones = torch.tensor([0.0, 0.0, 0.0, 1.0])
    gamma = 0.9
    got = double_dqn_targets(online, target, rewards, next_obs, dones, gamma)
    expected = []
    for s, r, d in zip(states, rewards.tolist(), dones.tolist(), strict=True):
        q_online = online.table[s].tolist()
        best = max(range(3), key=lambda a, q=q_online: q[a])
        expected.append(r + (0.0 if d else gamma * target.table[s][best].item()))
    torch.testing.assert_close(got, torch.tensor(expected))
    assert expected == pytest.approx([1 + 0.9 * 0.5, 0.9 * -6.0, -1 + 0.9 * -2.0, 2.0])
    vanilla = rewards + gamma * (1 - dones) * target(next_obs).amax(1)
    assert not torch.allclose(got, vanilla)


def test_dqn_loss_is_huber_of_q_taken_minus_target() -> None:
    from robustact.rl.replay import Batch

    online = _Table([[1.0, 5.0], [0.0, -1.0]])
    target = _Table([[2.0, 0.5], [2.0, 8.0]])
    obs = torch.zeros(2, 1, 1, 1)
    obs[1, 0, 0, 0] = 1
    batch = Batch(obs=obs, actions=torch.tensor([1, 0]), rewards=torch.tensor([0.5, 1.0]),
                  next_obs=obs.flip(0), dones=torch.tensor([0.0, 1.0]))
    # q taken: 5.0 and 0.0; targets: 0.5 + 0.5 * Q_t(1, argmax Q_o(1) = 0) = 1.5, and 1.0
    loss = dqn_loss(online, target, batch, gamma=0.5)
    diffs = [5.0 - 1.5, 0.0 - 1.0]
    huber = [0.5 * d * d if abs(d) <= 1 else abs(d) - 0.5 for d in diffs]
    assert loss.item() == pytest.approx(sum(huber) / 2)


def test_epsilon_schedule() -> None:
    config = DQNConfig(game="breakout", replay_start=100, eps_frames=1000, eps_start=1.0,
                       eps_end=0.1)
    assert epsilon_at(0, config) == epsilon_at(99, config) == 1.0
    assert epsilon_at(100, config) == pytest.approx(1.0)
    assert epsilon_at(600, config) == pytest.approx(0.55)
    assert epsilon_at(1100, config) == epsilon_at(10**6, config) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"game": "pong"}, "unknown MinAtar game 'pong'; valid names: asterix"),
        ({"frames": 0}, "frames must be an integer >= 1"),
        ({"optimizer": "sgd"}, "optimizer must be adam or rmsprop"),
        ({"replay_start": 10, "replay_size": 5}, "replay_start .10. cannot exceed"),
        ({"gamma": 1.5}, r"gamma must be a number in \[0, 1\]"),
        ({"network": "resnet"}, "unknown Q-network 'resnet'"),
        ({"colour": 1}, "unknown DQN option.s. colour"),
    ],
)
def test_bad_dqn_options_raise_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DQNConfig.from_dict(options)


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rl") / "breakout"
    train_dqn(DQNConfig(**QUICK, out=str(out)), log=lambda _m: None)
    return out


def test_short_training_beats_a_random_policy(quick_agent: Path) -> None:
    model, ckpt = load_agent(quick_agent)
    assert ckpt["frames"] == 6000 and ckpt["updates"] == (6000 - 500) // 2 + 1
    greedy = play_episodes(model, "breakout", episodes=20, seed=100)
    random = play_episodes(model, "breakout", episodes=20, seed=100, epsilon=1.0)
    assert greedy.mean >= random.mean + 1.0, (greedy.mean, random.mean)
    rows = [json.loads(line) for line in (quick_agent / "metrics.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in rows] == [2000, 4000, 6000]
    assert json.loads((quick_agent / "summary.json").read_text())["config_hash"] == \
        DQNConfig(**QUICK).hash()


def test_resume_continues_the_counters(tmp_path: Path) -> None:
    options = dict(QUICK, frames=600, replay_start=100, log_every=200, checkpoint_every=300)
    out = str(tmp_path / "run")
    train_dqn(DQNConfig(**options, out=out), log=lambda _m: None)
    first = torch.load(Path(out) / "checkpoint.pt", weights_only=True)
    result = train_dqn(DQNConfig(**dict(options, frames=900), out=out), resume=True,
                       log=lambda _m: None)
    assert result.frames == 900 and [h["frames"] for h in result.history] == [200, 400, 600,
                                                                              800, 900]
    # updates restart after the refilled buffer holds replay_start transitions again
    assert result.updates == first["updates"] + (900 - 600 - 100) // 2 + 1
    with pytest.raises(CheckpointError, match="trained with other lr"):
        train_dqn(DQNConfig(**dict(options, frames=1200, lr=0.01), out=out), resume=True)
    with pytest.raises(CheckpointError, match="already 900 frames"):
        train_dqn(DQNConfig(**dict(options, frames=900), out=out), resume=True)
    with pytest.raises(CheckpointError, match="not a robustact DQN agent|not found"):
        load_agent(tmp_path / "nothing")


# --- attacks and evaluation ----------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 0.3])
def test_fgsm_observations_stay_in_range_and_in_the_ball(eps: float) -> None:
    torch.manual_seed(0)
    model = create_q_network("minatar", 4, 3).eval()
    x = _observations("breakout", 24)
    sap_model = apply_sap(copy.deepcopy(model), 1.0).eval()
    for attacked in (model, EOT(sap_model, 8)):
        x_adv = fgsm_observations(attacked, x, eps)
        assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).abs().max() <= eps + 1e-7
        if eps == 0:
            assert torch.equal(x_adv, x)
        else:  # every entry moved by eps or was clipped at the boundary it pushed against
            delta = (x_adv - x).abs()
            assert delta.max() > 0
            moved = torch.isclose(delta, torch.tensor(eps), atol=1e-6)
            assert bool(((delta == 0) | moved).all())
        assert torch.equal(x_adv.round(), x)  # eps < 0.5: rounding recovers the state


def test_fgsm_raises_the_loss_of_the_greedy_action() -> None:
    torch.manual_seed(1)
    model = create_q_network("minatar", 4, 3).eval()
    x = _observations("breakout", 32)
    actions = model(x).argmax(1)
    x_adv = fgsm_observations(model, x, 4 / 255, actions)
    ce = nn.functional.cross_entropy
    assert ce(model(x_adv), actions).item() > ce(model(x), actions).item()
    # the default label is the greedy action, read from the same forward
    torch.testing.assert_close(fgsm_observations(model, x, 4 / 255), x_adv)


class _Recorder(nn.Module):
    """Wraps a Q-network and keeps every input it is shown."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


def test_played_observations_are_attacked_within_the_ball() -> None:
    torch.manual_seed(2)
    eps = 4 / 255
    policy = _Recorder(create_q_network("minatar", 4, 3).eval())
    result = play_episodes(policy, "breakout", episodes=3, eps=eps, seed=7, max_frames=30)
    assert len(result.returns) == 3 and all(1 <= f <= 30 for f in result.frames)
    assert result.truncated == sum(f == 30 for f in result.frames)
    seen = torch.cat(policy.seen)
    assert seen.min() >= 0 and seen.max() <= 1
    perturbed = seen[(seen != seen.round()).flatten(1).any(1)]
    assert len(perturbed) > 0  # the policy acted on attacked observations
    assert (perturbed - perturbed.round()).abs().max() <= eps + 1e-6


def test_relative_change_follows_the_seed() -> None:
    assert relative_change(15.0, 10.0) == pytest.approx(50.0)
    assert relative_change(5.0, -10.0) == pytest.approx(150.0)
    assert math.isnan(relative_change(3.0, 0.0))


def test_evaluate_agents_leaves_the_model_dense(quick_agent: Path) -> None:
    model, ckpt = load_agent(quick_agent)
    state = copy.deepcopy(model.state_dict())
    rows = evaluate_agents(model, ckpt, [0, 2 / 255], episodes=2, samples=4, mc_samples=6,
                           seed=3, max_frames=200)
    assert [(r.agent, r.eps) for r in rows] == [("dense", 0.0), ("dense", 2 / 255),
                                                ("sap-100", 0.0), ("sap-100", 2 / 255)]
    assert rows[2].params["samples"] == 4 and rows[2].params["mc_samples"] == 6
    assert not any(isinstance(m, SAP) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match="lambda must be in"):
        evaluate_agents(model, ckpt, [2.0], episodes=1)


# --- study, store, command line ------------------------------------------------------------


RL_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "rl").glob("*.yaml"))


@pytest.mark.parametrize("path", RL_CONFIGS, ids=lambda p: p.name)
def test_shipped_rl_studies_load(path: Path) -> None:
    study = load_rl_study(path)
    assert study.cells and {c.train.game for c in study.cells} <= set(list_games())
    for cell in study.cells:
        assert cell.evaluate["eps"][0] == 0.0 and max(cell.evaluate["eps"]) < 0.5


def test_bad_rl_study_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: {frames: 10}\ngrid: {game: [breakout]}\nevaluate: {eps: [0], n: 3}\n")
    with pytest.raises(ConfigError, match="unknown evaluate key.s. n"):
        load_rl_study(path)
    path.write_text("train: {frames: 10}\ncells: [{id: a, game: pong}]\n")
    with pytest.raises(ConfigError, match="cell a: unknown MinAtar game"):
        load_rl_study(path)


def test_rl_study_files_are_told_apart(tmp_path: Path) -> None:
    """``robustact report``/``results`` read an RL study file with the RL loader."""
    from robustact.study.rl_config import is_rl_study_file

    configs = Path(__file__).parents[1] / "configs"
    assert is_rl_study_file(configs / "rl" / "minatar.yaml")
    assert not is_rl_study_file(configs / "kaf" / "fashion_mnist.yaml")
    path = tmp_path / "s.yaml"
    path.write_text("train: {frames: 10}\ngrid: {game: [breakout]}\n")
    assert is_rl_study_file(path)
    path.write_text("train: [unclosed\n")
    assert not is_rl_study_file(path)  # the loader then says what is wrong


def test_parse_eps() -> None:
    assert parse_eps("4/255") == pytest.approx(4 / 255) and parse_eps(0) == 0.0
    for bad in ("x/255", "2", True, "1/0"):
        with pytest.raises(ConfigError, match="lambda"):
            parse_eps(bad)


def test_study_records_returns_in_the_store(tmp_path: Path, quick_agent: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    study_file = tmp_path / "rl.yaml"
    study_file.write_text(
        f"name: rl_test\nout: {tmp_path / 'study'}\n"
        "train: {" + ", ".join(f"{k}: {v}" for k, v in QUICK.items() if k != "game") + "}\n"
        "cells:\n  - {id: breakout, game: breakout}\n"
        "evaluate: {eps: [0, 2/255], episodes: 2, samples: 3, max_frames: 100}\n")
    study = load_rl_study(study_file)
    # reuse the module's trained agent: same options, so the same configuration hash
    cell_dir = study.cells[0].out
    cell_dir.mkdir(parents=True)
    for name in ("checkpoint.pt", "summary.json", "metrics.jsonl"):
        (cell_dir / name).write_bytes((quick_agent / name).read_bytes())
    assert run_rl_study(study, log=lambda _m: None) == {"breakout": "done"}
    store = ResultsStore(study.store_path)
    run = store.run("rl_test", "breakout")
    assert run["status"] == "done" and run["config"]["game"] == "breakout"
    assert len(store.epochs(run["id"])) == 3
    keys = {a["key"] for a in store.artifacts(run["id"], "rl_returns")}
    assert keys == {f"{agent} fgsm eps={eps!r}" for agent in ("dense", "sap-100")
                    for eps in (0.0, 2 / 255)}
    table = (study.out / "results.md").read_text()
    assert "sap-100 vs dense" in table and "| breakout | breakout |" in table
    assert main(["rl", "table", str(study_file)]) == 0
    assert "Relative change in mean return" in capsys.readouterr().out
    # one lifecycle for image and RL cells: `robustact run` lists RL cells from the store
    assert main(["run", str(study_file), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["breakout", "done"]


def test_cli_rl_eval_json_and_errors(quick_agent: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rl", "eval", "--checkpoint", str(quick_agent), "--eps", "0,1/255",
                 "--episodes", "2", "--samples", "2", "--max-frames", "50", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["agent"], round(255 * r["eps"])) for r in rows} == {
        ("dense", 0), ("dense", 1), ("sap-100", 0), ("sap-100", 1)}
    assert main(["rl", "eval", "--checkpoint", str(quick_agent), "--eps", "0,x"]) == 2
    assert "lambda must be a number or N/255" in capsys.readouterr().err
    assert main(["rl", "train", "--game", "pong"]) == 2
    assert "unknown MinAtar game" in capsys.readouterr().err
