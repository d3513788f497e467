"""The training loop: resume equals an uninterrupted run, schedules, sparsity, fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustact.errors import CheckpointError, ConfigError
from robustact.train import TrainConfig, load_model, lr_at, save_atomic, train
from robustact.train.checkpoint import load_checkpoint
from robustact.train.metrics import read_metrics


def tiny(out: Path, **overrides: object) -> TrainConfig:
    options: dict[str, object] = dict(
        model="small_cnn", dataset="fashion_mnist", activation="kwta", act_kwargs={"ratio": 0.2},
        epochs=3, batch_size=64, lr=0.05, train_subset=384, test_subset=128, device="cpu",
        out=str(out), progress=False, seed=7,
    )
    options.update(overrides)
    return TrainConfig(**options)  # type: ignore[arg-type]


class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = train(tiny(tmp_path / "a"), log=lambda _: None)

    config = tiny(tmp_path / "b")
    calls = {"n": 0}

    def kill_mid_epoch_2(_module: object, _inputs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 6 + 1 + 3:  # 6 train + 1 test batch of epoch 1, then 3 batches in
            raise Killed

    from robustact.train import loop

    original = loop.build_model

    def build_with_hook(cfg: dict) -> torch.nn.Module:
        model = original(cfg)
        model.register_forward_pre_hook(kill_mid_epoch_2)
        return model

    loop.build_model = build_with_hook
    try:
        with pytest.raises(Killed):
            train(config, log=lambda _: None)
    finally:
        loop.build_model = original
    assert load_checkpoint(tmp_path / "b")["epoch"] == 0  # epoch 1 was saved, epoch 2 was not
    with pytest.raises(ConfigError, match="--resume"):
        train(config, log=lambda _: None)
    resumed = train(config, resume=True, log=lambda _: None)
    assert resumed.resumed_from_epoch == 1
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["test_acc"] == reference.history[-1]["test_acc"]


def test_training_learns_and_records_metrics(tmp_path: Path) -> None:
    result = train(tiny(tmp_path, activation="relu", act_kwargs={}, epochs=2, train_subset=1024,
                        metrics_file="metrics.csv"), log=lambda _: None)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_acc", "test_acc", "lr", "ratio", "images_per_s"}
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert result.test_accuracy > 0.5  # 10 classes: chance is 0.1
    model, config = load_model(tmp_path)
    assert config["activation"] == "relu" and not model.training


def test_incremental_sparsity_in_the_loop_and_finetuning(tmp_path: Path) -> None:
    base = train(tiny(tmp_path / "base", epochs=1), log=lambda _: None)
    config = tiny(tmp_path / "inc", epochs=4, finetune_from=str(base.checkpoint), lr=0.01,
                  sparsity={"start": 0.2, "target": 0.1, "step": 0.05, "every": 1})
    result = train(config, log=lambda _: None)
    assert [r["ratio"] for r in result.history] == [0.2, 0.15, 0.1, 0.1]
    model, _ = load_model(tmp_path / "inc")
    from robustact.activations.kwta import kwta_ratios

    assert set(kwta_ratios(model)) == {0.1}  # the ratio reached is kept in the checkpoint


def test_finetune_from_a_different_model_is_refused(tmp_path: Path) -> None:
    base = train(tiny(tmp_path / "base", epochs=1), log=lambda _: None)
    config = tiny(tmp_path / "other", model="resnet20", epochs=1,
                  finetune_from=str(base.checkpoint))
    with pytest.raises(CheckpointError, match="does not fit model 'resnet20'"):
        train(config, log=lambda _: None)


def test_lr_schedules() -> None:
    def cfg(**kw: object) -> TrainConfig:
        return TrainConfig(epochs=10, lr=0.1, **kw)  # type: ignore[arg-type]

    assert lr_at(cfg(schedule="constant"), 7.3) == 0.1
    assert lr_at(cfg(schedule="step", step_size=4, gamma=0.5), 8.0) == pytest.approx(0.025)
    multistep = cfg(schedule="multistep", milestones=[5, 8])
    assert [round(lr_at(multistep, t), 6) for t in (4.9, 5.0, 7.9, 8.0)] == [0.1, 0.01, 0.01, 0.001]
    cosine = cfg(schedule="cosine")
    assert lr_at(cosine, 0) == 0.1 and lr_at(cosine, 5) == pytest.approx(0.05)
    one = cfg(schedule="onecycle", peak_at=0.4)
    assert lr_at(one, 0) == 0 and lr_at(one, 4) == pytest.approx(0.1)
    assert lr_at(one, 7) == pytest.approx(0.05) and lr_at(one, 10) == 0
    warm = cfg(schedule="constant", warmup_epochs=2)
    assert lr_at(warm, 1) == pytest.approx(0.05)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="unknown schedule 'cosin'"):
        TrainConfig(schedule="cosin")
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="needs activation 'kwta'"):
        TrainConfig(activation="relu", sparsity={"start": 0.2, "target": 0.1})
    assert TrainConfig(out="a").hash() == TrainConfig(out="b").hash() != TrainConfig(lr=0.2).hash()


def test_atomic_save_and_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_atomic({"model_state": {"w": torch.ones(3)}, "config": {}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
