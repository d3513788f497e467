"""Adversarial training in the one loop: fast FGSM-AT, PGD-AT, mixed batches, the guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustact.attacks import FGSM, PGD
from robustact.errors import ConfigError
from robustact.train import TrainConfig, load_model, train
from robustact.train.checkpoint import load_checkpoint
from robustact.train.config import AdversarialTraining
from robustact.train.loop import _adversarial_batch, _Guard


def quiet(_: str) -> None:
    pass


def config(out: Path, **overrides: object) -> TrainConfig:
    options: dict[str, object] = dict(
        model="small_cnn", dataset="fashion_mnist", epochs=2, batch_size=64, lr=0.05,
        schedule="cyclic", train_subset=4000, test_subset=200, device="cpu", out=str(out),
        progress=False, seed=0,
    )
    options.update(overrides)
    return TrainConfig(**options)  # type: ignore[arg-type]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, 3))


def test_fast_fgsm_follows_wong_et_al() -> None:
    """Uniform start in the ball, one signed step of 1.25 eps, projection: written out here."""
    model = tiny_model().eval()
    x, y, eps = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,)), 0.1
    torch.manual_seed(5)
    ours = FGSM(eps=eps, random_start=True, step_size=1.25 * eps).perturb(model, x, y)
    torch.manual_seed(5)
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).requires_grad_()
    loss = nn.functional.cross_entropy(model(start), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, start)
    ref = (start + 1.25 * eps * grad.sign()).detach()
    ref = torch.min(torch.max(ref, x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(ours, ref)
    assert (ours - x).abs().max() <= eps + 1e-6
    # the step is larger than eps from a random start: many pixels end on the ball's surface
    assert ((ours - x).abs() > eps - 1e-6).float().mean() > 0.3


def test_perturb_keeps_training_mode_and_fresh_randomness() -> None:
    model = tiny_model().train()
    x, y = torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,))
    attack = PGD(eps=0.05, steps=3, random_start=True)
    a, b = attack.perturb(model, x, y), attack.perturb(model, x, y)
    assert model.training  # crafted in training mode, mode untouched
    assert not torch.equal(a, b)  # no reseeding: every batch gets its own random start
    assert (a - x).abs().max() <= 0.05 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert attack._stats.loss == []  # crafting keeps no bookkeeping over a training run


def test_crafting_is_torchattacks_pgd_step_for_step() -> None:
    """perturb with one restart returns the last iterate: the same points torchattacks.PGD
    computes from the same random start (uniform in the ball, signed steps, projection)."""
    torchattacks = pytest.importorskip("torchattacks")  # a dev dependency (Makefile installs it)
    model = tiny_model().eval()
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    torch.manual_seed(3)
    ours = PGD(eps=0.1, steps=5, step_size=0.03).perturb(model, x, y)
    torch.manual_seed(3)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.03, steps=5, random_start=True)(x, y)
    torch.testing.assert_close(ours, theirs)


def test_mixed_batch_perturbs_only_the_adversarial_share() -> None:
    model = tiny_model().train()
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    attack = FGSM(eps=0.1, random_start=True, step_size=0.125)
    mixed = _adversarial_batch(attack, model, x, y, fraction=0.2)
    changed = (mixed != x).flatten(1).any(1)
    assert changed[:4].all() and not changed[4:].any()
    assert (mixed - x).abs().max() <= 0.1 + 1e-6
    small = _adversarial_batch(attack, model, x[:3], y[:3], 0.2)  # BatchNorm needs two
    assert (small != x[:3]).flatten(1).any(1).tolist() == [True, True, False]


def test_fast_at_is_more_robust_than_standard_training(tmp_path: Path) -> None:
    """The measured effect: PGD-10 accuracy at eps 0.1 on 200 test images."""
    eps = 0.1
    std = train(config(tmp_path / "std", train_subset=3488), log=quiet).model
    fast = train(config(tmp_path / "fast", adversarial={"method": "fgsm", "eps": eps}),
                 log=quiet)
    test = load_model(tmp_path / "fast")[0]
    from robustact.data import load_dataset

    data = load_dataset("fashion_mnist", "test").subset(200)
    x, y = data.images.float() / 255, data.labels
    pgd = PGD(eps=eps, steps=10)
    acc_std, acc_fast = pgd(std, x, y).robust_accuracy, pgd(test, x, y).robust_accuracy
    # measured (seed 0, CPU): standard 27.5%, fast AT 49.5%
    assert acc_fast > acc_std + 0.15 and acc_fast > 1.5 * acc_std, (acc_std, acc_fast)
    assert fast.test_accuracy > 0.6  # and it still classifies clean images
    assert all(r["guard_pgd_acc"] is not None for r in fast.history)


def test_pgd_at_trains(tmp_path: Path) -> None:
    result = train(config(tmp_path, epochs=1, train_subset=1536,
                          adversarial={"method": "pgd", "eps": 0.1, "steps": 2,
                                       "fraction": 0.5, "guard_size": 256}), log=quiet)
    assert result.history[0]["guard_pgd_acc"] > 0.05
    assert load_checkpoint(tmp_path)["config"]["adversarial"]["method"] == "pgd"


class ScriptedAttack:
    """Stands in for the guard's PGD: returns the scripted accuracies in turn."""

    steps = 10

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = iter(accuracies)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> object:
        return type("R", (), {"robust_accuracy": next(self.accuracies)})()


def test_guard_keeps_the_best_weights_on_a_collapse() -> None:
    adv = AdversarialTraining(eps=0.1, guard_drop=0.2)
    guard = _Guard(adv, torch.zeros(4, 16), torch.zeros(4, dtype=torch.long))
    guard.attack = ScriptedAttack([0.4, 0.5, 0.45, 0.1])
    model = tiny_model()
    snapshots = []
    for epoch in range(4):
        with torch.no_grad():
            model[1].weight.add_(1.0)  # an epoch of training
        snapshots.append(model[1].weight.clone())
        acc, message = guard.check(model, epoch)
        assert (message is None) == (epoch < 3), (epoch, message)
    assert "epoch 2" in message and "10.0%" in message and "50.0%" in message
    assert torch.equal(model[1].weight, snapshots[1])  # a 5-point dip (epoch 3) is tolerated


def test_training_stops_on_collapse_and_keeps_best(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AdversarialTraining, "guard_attack",
                        lambda self: ScriptedAttack([0.3, 0.4, 0.05]))
    logs: list[str] = []
    cfg = config(tmp_path, epochs=4, train_subset=1536,
                 adversarial={"method": "fgsm", "eps": 0.1, "guard_size": 256})
    result = train(cfg, log=logs.append)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]  # stopped, epoch 4 never ran
    assert any("catastrophic overfitting after epoch 3" in m for m in logs)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["stopped_early"] == 3 and ckpt["guard"]["best_epoch"] == 2
    for key, value in ckpt["guard"]["best_state"].items():
        assert torch.equal(ckpt["model_state"][key], value), key
    assert result.history[-1]["kept_epoch"] == 2
    assert result.test_accuracy == result.history[-1]["kept_test_acc"]
    logs.clear()
    again = train(cfg, resume=True, log=logs.append)  # nothing left to do
    assert len(again.history) == 3 and "nothing to resume" in logs[0]


def test_adversarial_config_errors(tmp_path: Path) -> None:
    for bad in ({"method": "free"}, {"eps": 0}, {"fraction": 1.5}, {"epsilon": 0.1},
                {"steps": 0}):
        with pytest.raises(ConfigError):
            config(tmp_path, adversarial=bad)
    with pytest.raises(ConfigError, match="guard_size"):
        train(config(tmp_path, train_subset=600, adversarial={"eps": 0.1}), log=quiet)
    assert config(tmp_path, schedule="cyclic").schedule == "onecycle"


def test_cli_adversarial_flags(tmp_path: Path) -> None:
    from robustact.cli import build_parser, train_options

    args = build_parser().parse_args(
        ["train", "--adv", "pgd", "--adv-eps", "0.1", "--adv-steps", "5",
         "--adv-fraction", "0.2", "--no-guard", "--out", str(tmp_path)])
    options = train_options(args)
    assert options["adversarial"] == {"method": "pgd", "eps": 0.1, "steps": 5,
                                      "fraction": 0.2, "guard": False}
    cfg = TrainConfig.from_dict(options)
    assert cfg.adversarial.attack().steps == 5


def test_guard_keeps_extra_state_of_kaf_and_kwta() -> None:
    """state_dict holds non-tensor extra state (KAF settings, k-WTA ratio): copied too."""
    from robustact.activations import initialize_lazy
    from robustact.models import create_model

    adv = AdversarialTraining(eps=0.1, guard_drop=0.2)
    for act in ("kaf", "kwta"):
        model = create_model("small_cnn", act_layer=act)
        initialize_lazy(model, torch.rand(2, 1, 28, 28))
        guard = _Guard(adv, torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
        guard.attack = ScriptedAttack([0.5, 0.1])
        reference = {k: v.clone() for k, v in model.state_dict().items()
                     if isinstance(v, torch.Tensor)}
        assert guard.check(model, 0)[1] is None
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        assert guard.check(model, 1)[1] is not None  # collapse: the epoch-1 weights return
        for key, value in reference.items():
            assert torch.equal(model.state_dict()[key], value), (act, key)
