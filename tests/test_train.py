"""The training loop: resume equals an uninterrupted run, schedules, sparsity, fine-tuning."""

from __future__ import annotations

import json
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
    with pytest.raises(CheckpointError, match=r"is truncated or corrupt \(PytorchStreamReader "
                       r"failed reading zip archive: failed finding central directory\); "
                       "restore it"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")


def test_lr_range_test_learns_then_diverges(tmp_path: Path) -> None:
    from robustact.report.figures import write_lr_find_figure
    from robustact.train.lr_find import lr_range_test, write_range_test

    config = tiny(tmp_path, activation="relu", act_kwargs={}, train_subset=1024)
    result = lr_range_test(config, start=1e-4, end=100.0, steps=60, beta=0.8)
    # the lr grows geometrically from start to end over the planned steps
    for i, lr in enumerate(result.lrs):
        assert lr == pytest.approx(1e-4 * (100.0 / 1e-4) ** (i / 59))
    # SGD with momentum cannot survive lr 100: the test stops on its own
    assert result.stopped == "diverged" and len(result.lrs) < 60
    # the smoothed curve is the bias-corrected moving average of the raw losses
    average = 0.0
    for i, (raw, smooth) in enumerate(zip(result.losses, result.smoothed, strict=True)):
        if not torch.isfinite(torch.tensor(raw)):
            break
        average = 0.8 * average + 0.2 * raw
        assert smooth == pytest.approx(average / (1 - 0.8 ** (i + 1)))
    # in between, the network learned: the loss fell well below its start (ln 10 = 2.30)
    assert min(result.smoothed) < result.smoothed[0] - 0.5
    assert 1e-4 < result.lr_steepest <= result.lr_min_loss < 100.0
    path = write_range_test(result, config, tmp_path / "lrf")
    write_lr_find_figure(tmp_path / "lrf", result, config)  # the report layer draws it
    svg = (tmp_path / "lrf" / "lr_find.svg").read_text()
    assert path.exists() and 'data-series="smoothed"' in svg and 'data-series="loss"' in svg


def test_range_test_readings() -> None:
    from robustact.report.figures import range_test_table
    from robustact.train.lr_find import RangeTest

    lrs = [10.0 ** e for e in range(-5, 1)]  # one decade per step
    curve = RangeTest(lrs, [0.0] * 6, [2.3, 2.2, 1.5, 1.2, 1.1, 3.0])
    assert curve.lr_min_loss == 1e-1  # smallest smoothed loss
    assert curve.lr_steepest == pytest.approx(1e-4)  # 2.2 -> 1.5 is the steepest fall
    assert "steepest descent at lr 0.0001" in range_test_table(curve)  # the report renders


def test_lr_find_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustact.cli import main

    base = ["lr-find", "--model", "small_cnn", "--dataset", "fashion_mnist", "--train-subset",
            "512", "--batch-size", "32", "--device", "cpu", "--no-progress"]
    assert main([*base, "--adv", "fgsm", "--adv-eps", "0.1", "--steps", "8",
                 "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert len(saved["lrs"]) == 8 and saved["config"]["adversarial"]["method"] == "fgsm"
    assert saved["lrs"][0] == pytest.approx(1e-5) and saved["lrs"][-1] == pytest.approx(1.0)
    assert "steepest descent" in capsys.readouterr().out
    assert main([*base, "--start-lr", "1", "--end-lr", "0.1"]) == 2
    assert "0 < start < end" in capsys.readouterr().err
