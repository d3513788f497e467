"""The command line, end to end on a small subset of the real Fashion-MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustact.cli import main

TINY = ["--model", "small_cnn", "--dataset", "fashion_mnist", "--train-subset", "256",
        "--test-subset", "128", "--batch-size", "64", "--device", "cpu", "--no-progress"]


def test_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--activation", "kwta", "--ratio", "0.2", "--epochs", "1",
                 "--lr", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and (out / "checkpoint.pt").is_file()
    assert main(["eval", "--checkpoint", str(out), "--n", "100", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 100 and 0.0 <= result["accuracy"] <= 1.0


def test_config_file_with_flag_overrides(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("activation: kwta\nact_kwargs: {ratio: 0.3}\nepochs: 5\nlr: 0.01\n"
                      "schedule: constant\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), *TINY, "--epochs", "1", "--ratio", "0.25",
                 "--out", str(out)]) == 0
    saved = (out / "config.yaml").read_text()
    assert "ratio: 0.25" in saved and "epochs: 1" in saved and "lr: 0.01" in saved
    # another activation on the command line drops the file's k-WTA arguments
    assert main(["train", "--config", str(config), *TINY, "--epochs", "1", "--activation",
                 "relu", "--out", str(tmp_path / "relu")]) == 0
    assert "act_kwargs: {}" in (tmp_path / "relu" / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "resnet99", "--out", "x"], "unknown model 'resnet99'; valid names:"),
        (["train", "--activation", "kwta", "--ratio", "1.5", *TINY, "--out", "{tmp}"],
         r"ratio must be in (0, 1]"),
        (["train", "--dataset", "imagenet", "--out", "x"], "unknown dataset 'imagenet'"),
        (["eval", "--checkpoint", "{tmp}/missing"], "not found"),
        (["train", "--config", "{tmp}/none.yaml"], "config file"),
    ],
)
def test_user_mistakes_give_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert message in err


def test_help_shows_examples() -> None:
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "robustact", *argv], capture_output=True,
                              text=True, check=True)
        assert "examples:" in proc.stdout and "robustact" in proc.stdout


def test_list_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "activations"]) == 0
    assert "kwta" in capsys.readouterr().out.split()
    assert main(["list", "models"]) == 0
    assert "resnet18" in capsys.readouterr().out.split()


def test_eval_with_posthoc_sap_and_defense(tmp_path, capsys) -> None:
    from robustact.train import TrainConfig, train

    train(TrainConfig(model="small_cnn", dataset="fashion_mnist", epochs=1, batch_size=64,
                      lr=0.05, train_subset=512, test_subset=64, device="cpu",
                      out=str(tmp_path), progress=False), log=lambda _: None)
    assert main(["eval", "--checkpoint", str(tmp_path), "--n", "64", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(tmp_path), "--n", "64", "--sap", "1.0",
                 "--samples", "4", "--json"]) == 0
    sap = json.loads(capsys.readouterr().out)
    assert sap["defense"] == {"defense": "sap", "frac": 1.0} and sap["samples"] == 4
    assert plain["n"] == sap["n"] == 64 and 0 <= sap["ece"] <= 1
    assert main(["eval", "--checkpoint", str(tmp_path), "--n", "64", "--defense",
                 "dro:p=0.5", "--samples", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["defense"] == {"defense": "dro", "p": 0.5}
    assert main(["eval", "--checkpoint", str(tmp_path), "--defense", "nope:p=1"]) == 2
    assert "unknown defense 'nope'" in capsys.readouterr().err
