"""Every value is checked where it enters: flags, config and study files, attack specs.

Each bad value is one ``error:`` line naming the flag (or the file, cell and key) and exits 2
before any work starts; good values, and every shipped config, are still accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustact.attacks import FGSM, PGD
from robustact.cli import main
from robustact.errors import ConfigError
from robustact.eval import AttackSpec
from robustact.eval.config import EvalConfig
from robustact.study.config import load_study
from robustact.study.rl_config import load_rl_study
from robustact.train import TrainConfig

TINY = ["--model", "small_cnn", "--dataset", "fashion_mnist", "--epochs", "1",
        "--train-subset", "64", "--test-subset", "32", "--device", "cpu", "--no-progress"]
NOWHERE = "{tmp}/no-checkpoint"  # the value is refused before the checkpoint is looked for
ATTACK = ["attack", "--checkpoint", NOWHERE, "--eps", "0.1", "--n", "8"]
EVAL = ["eval", "--checkpoint", NOWHERE]
RL_EVAL = ["rl", "eval", "--checkpoint", NOWHERE]


def one_error_line(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command; it must exit 2 with exactly one ``error:`` line and no traceback."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", *TINY, "--train-subset", "0"], "--train-subset must be >= 1, got 0"),
    (["train", *TINY, "--test-subset", "0"], "--test-subset must be >= 1, got 0"),
    (["train", *TINY, "--gamma", "-1"], "--gamma must be > 0, got -1.0"),
    (["train", *TINY, "--momentum", "-1"], "--momentum must be >= 0, got -1.0"),
    (["train", *TINY, "--step-size", "0"], "--step-size must be >= 1, got 0"),
    (["train", *TINY, "--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
    (["train", *TINY, "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["train", *TINY, "--lr", "0"], "--lr must be > 0"),
    (["train", *TINY, "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", *TINY, "--adv", "fgsm", "--adv-eps", "2"], "--adv-eps must be in [0, 1]"),
    (["train", *TINY, "--adv", "pgd", "--adv-steps", "0"], "--adv-steps must be >= 1"),
    (["train", *TINY, "--sparsity-every", "0", "--activation", "kwta"],
     "--sparsity-every must be >= 1"),
    (["train", *TINY, "--model", "alexnet", "--dataset", "svhn"], "add --resize 224"),
    (["train", *TINY, "--act-arg", "ratio"], "--act-arg expects KEY=VALUE"),
    ([*ATTACK, "--eps", "1.5"], "--eps 1.5 is above 1"),
    ([*ATTACK, "-n", "0"], "--n must be >= 1, got 0"),
    ([*ATTACK, "--samples", "0"], "--samples must be >= 1, got 0"),
    ([*ATTACK, "--probe-size", "-1"], "--probe-size must be >= 1, got -1"),
    ([*ATTACK, "--block", "0"], "--block must be >= 1"),
    ([*ATTACK, "--attack", "pgd:step_size=0"], "attack pgd, step_size: must be > 0"),
    ([*ATTACK, "--attack", "pgd:steps=0"], "attack pgd, steps: must be >= 1"),
    ([*ATTACK, "--attack", "pgd:eot=0"], "eot must be an integer >= 1, got 0"),
    ([*ATTACK, "--attack", "pgd:eot=abc"], "eot must be an integer >= 1, got 'abc'"),
    ([*ATTACK, "--attack", "pgd:bpda=abc"], "bpda must be true or false, got 'abc'"),
    ([*ATTACK, "--attack", "fgsm:targeted=true"], "targeted is not supported by fgsm"),
    ([*ATTACK, "--attack", "pgd:stepz=3"], "has no option 'stepz'; valid options: norm, steps"),
    ([*EVAL, "--n", "0"], "--n must be >= 1, got 0"),
    ([*EVAL, "--samples", "0"], "--samples must be >= 1, got 0"),
    ([*EVAL, "--batch-size", "-1"], "--batch-size must be >= 1"),
    ([*EVAL, "--sap", "1.5"], "--sap must be <= 1"),
    ([*RL_EVAL, "--episodes", "0"], "--episodes must be >= 1, got 0"),
    ([*RL_EVAL, "--samples", "0"], "--samples must be >= 1, got 0"),
    ([*RL_EVAL, "--eps", "abc"], "FGSM lambda must be a number or N/255"),
])
def test_bad_flag_values_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert message in one_error_line(argv, tmp_path, capsys)


@pytest.mark.parametrize("argv", [
    ["train", *TINY, "--epochs", "three"], ["train", *TINY, "--lr", "fast"],
    ["attack", "--checkpoint", "x", "--eps", "0.1", "-n", "many"],
    ["eval", "--checkpoint", "x", "--samples", "1.5"],
])
def test_non_numbers_are_one_line_usage_errors(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: robustact {argv[0]}: argument "), err
    assert "invalid" in err[0] and err[0].endswith("--help)")


def test_config_file_values_name_the_file_and_key(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: small_cnn\ndataset: fashion_mnist\nepochs: three\n")
    line = one_error_line(["train", "--config", str(config), "--out", "x"], tmp_path, capsys)
    assert f"{config}, epochs: must be an integer, got 'three'" in line
    # the flag wins over the file, and the error then names the flag
    line = one_error_line(["train", "--config", str(config), "--epochs", "0"], tmp_path, capsys)
    assert "--epochs must be >= 1, got 0" in line
    config.write_bytes(bytes(range(256)))
    assert "is not text" in one_error_line(["train", "--config", str(config)], tmp_path, capsys)
    config.write_text("- model\n- small_cnn\n")
    assert "must hold a mapping" in one_error_line(["train", "--config", str(config)],
                                                   tmp_path, capsys)


STUDY = """\
name: s
train: {model: small_cnn, dataset: fashion_mnist, epochs: 1, train_subset: 64,
        test_subset: 32, device: cpu}
cells:
  - {id: relu}
  - {id: bad%(cell)s}
evaluate: {eps: [0.1], n: 8, suite: none, attacks: [fgsm]%(evaluate)s}
"""


@pytest.mark.parametrize(("cell", "evaluate", "message"), [
    (", epochs: three", "", "cell bad, epochs: must be an integer, got 'three'"),
    (", epochs: 0", "", "cell bad, epochs: must be >= 1, got 0"),
    (", act_kwargs: 0.2", "", "cell bad, act_kwargs: must be a mapping"),
    (", train_subset: 0", "", "cell bad, train_subset: must be >= 1, got 0"),
    (", warmup_epochs: -1", "", "cell bad, warmup_epochs: must be >= 0"),
    (", augment: maybe", "", "cell bad, augment: must be true or false"),
    (", foo: 1", "", "cell bad: unknown training option(s) foo; valid:"),
    (", adversarial: 0.1", "", "cell bad, adversarial: must be a mapping"),
    (", model: alexnet, dataset: svhn", "", "cell bad: model alexnet needs images of at least"),
    (", evaluate: {n: 0}", "", "cell bad, evaluate.n: must be >= 1, got 0"),
    (", evaluate: {n: many}", "", "cell bad, evaluate.n: must be an integer, got 'many'"),
    (", evaluate: {attacks: fgsm}", "", "cell bad, evaluate.attacks: must be a list"),
    (", evaluate: {eps: abc}", "", "cell bad, evaluate.eps: must be a number or N/255"),
    (", evaluate: {eps: [1.5]}", "", "cell bad, evaluate.eps: 1.5 is above 1"),
    (", evaluate: {samples: 0}", "", "cell bad, evaluate.samples: must be >= 1"),
    (", evaluate: {probe_size: -1}", "", "cell bad, evaluate.probe_size: must be >= 1"),
    (", evaluate: {independent: yes please}", "", "evaluate.independent: must be true or"),
    (", evaluate: {attacks: ['pgd:eot=0']}", "", "cell bad: attack pgd: eot must be an"),
    (", evaluate: {attacks: ['pgd:step_size=0']}", "", "attack pgd, step_size: must be > 0"),
    (", evaluate: 3", "", "cell bad, evaluate: must be a mapping"),
    (", evaluate: {calibration: {bins: 0}}", "", "evaluate.calibration.bins: must be >= 1"),
    (", evaluate: {landscape: {n: 0}}", "", "cell bad, evaluate.landscape.n: must be >= 1"),
    (", evaluate: {attacks: [fgsm, 3]}", "", "cell bad, evaluate.attacks[1]: must be a text"),
    (", posthoc: sap", "", "cell bad, posthoc: must be a mapping with a defense"),
    ("", ", n: 0", "s.yaml, evaluate.n: must be >= 1, got 0"),
    ("", ", attacks: fgsm", "s.yaml, evaluate.attacks: must be a list, got 'fgsm'"),
])
def test_study_cells_are_all_checked_when_the_file_is_read(
        cell: str, evaluate: str, message: str, tmp_path: Path) -> None:
    """The bad cell is the last one: the whole file is checked before any cell trains."""
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.replace("%(cell)s", cell).replace("%(evaluate)s", evaluate)
                    .replace(", attacks: [fgsm], attacks: fgsm", ", attacks: fgsm"))
    with pytest.raises(ConfigError) as exc:
        load_study(path)
    text = str(exc.value)
    assert message in text and len(text.splitlines()) == 1, text
    assert text.startswith(str(path))


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x01\xff\xfe binary", "is not text"),
    (b"- a\n- b\n", "must hold a mapping of options"),
    (b"name: s\ntrain: 3\ncells: [{id: a}]\n", "train: must be a mapping"),
    (b"name: s\ngrid: {activation: relu}\n", "grid: must map option names to non-empty lists"),
    (b"name: s\ncells: {id: a}\n", "cells: must be a list"),
    (b"name: s\ncells: [{id: a}]\nevaluate: [0.1]\n", "evaluate: must be a mapping"),
    (b"name: s\ncells: [{id: a}]\nextra: 1\n", "unknown study key(s) extra"),
])
def test_bad_study_files_are_one_line(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_study(path)


def test_run_refuses_a_bad_cell_before_training(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.replace("%(cell)s", ", evaluate: {n: 0}")
                    .replace("%(evaluate)s", "") + f"out: {tmp_path / 'out'}\n")
    line = one_error_line(["run", str(path)], tmp_path, capsys)
    assert "cell bad, evaluate.n: must be >= 1, got 0" in line
    assert not (tmp_path / "out" / "relu").exists()  # the good cell did not train


def test_rl_study_cells_are_checked_when_the_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rl.yaml"
    path.write_text("train: {frames: 10}\ncells: [{id: a, game: breakout},\n"
                    "  {id: b, game: breakout, evaluate: {episodes: 0}}]\n")
    with pytest.raises(ConfigError, match=r"rl.yaml, cell b, evaluate.episodes: must be >= 1"):
        load_rl_study(path)
    path.write_text("train: {frames: 10}\ncells: [{id: a, game: breakout}]\n"
                    "evaluate: {samples: many}\n")
    with pytest.raises(ConfigError, match="cell a, evaluate.samples: must be an integer"):
        load_rl_study(path)


@pytest.mark.parametrize(("spec", "message"), [
    ("pgd:eot=0", "eot must be an integer >= 1"),
    ("pgd:eot=abc", "eot must be an integer >= 1"),
    ("pgd:bpda=abc", "bpda must be true or false"),
    ("pgd:steps=0", "steps: must be >= 1"),
    ("pgd:step_size=0", "step_size: must be > 0"),
    ("fgsm:step_size=-0.1", "step_size: must be > 0"),
    ("pgd:restarts=0", "restarts: must be >= 1"),
    ("fgsm:targeted=true", "targeted is not supported by fgsm; use an attack with a targeted"),
    ("deepfool:targeted=true", "targeted is not supported by deepfool"),
    ("pgd:foo=1", "has no option 'foo'; valid options: norm, steps, step_size"),
    ("square:queries=0", "queries must be >= 2"),
    ("nosuch", "unknown attack 'nosuch'"),
])
def test_attack_spec_options_are_checked_when_parsed(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        AttackSpec.parse(spec)
    assert message in str(exc.value) and len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("spec", ["pgd:steps=40,restarts=5,eot=32", "pgd:bpda=true",
                                  "apgd:targeted=true", "bim:steps=ceil", "square:queries=100",
                                  "pgd:steps=10,step_size=0.01,norm=l2", "deepfool"])
def test_good_attack_specs_are_accepted(spec: str) -> None:
    assert AttackSpec.parse(spec).name == spec.partition(":")[0]


def test_eps_above_one_only_for_l2() -> None:
    with pytest.raises(ConfigError, match="eps: 1.5 is above 1"):
        EvalConfig.from_dict({"eps": [1.5], "n": 8})
    assert EvalConfig.from_dict({"eps": [1.5], "n": 8, "norm": "l2"}).eps == (1.5,)
    assert EvalConfig.from_dict({"eps": [1.5], "suite": "none",
                                 "attacks": ["pgd:norm=l2"]}).eps == (1.5,)


def test_checks_do_not_change_what_a_configuration_hashes() -> None:
    """Values are checked, never converted (an int lr stays an int): the hashes are those of
    robustact before typed validation, so stored records keep matching."""
    as_int = TrainConfig.from_dict({"lr": 1, "momentum": 0, "epochs": 2})
    assert isinstance(as_int.lr, int) and as_int.hash() == "9ad4d0a49ec4"
    assert TrainConfig().hash() == "cd479f0ad904"
    evaluate = EvalConfig.from_dict({"eps": ["8/255"], "n": 500, "attacks": ["pgd:steps=40"]})
    assert evaluate.hash() == "c4d7b5d38b1b"


def test_shipped_configs_still_load() -> None:
    root = Path(__file__).parents[1] / "configs"
    studies = [p for p in root.rglob("*.yaml") if p.parent.name != "rl"]
    for path in studies:
        text = path.read_text()
        if "cells:" in text or "grid:" in text:
            assert load_study(path).cells
    for path in (root / "rl").glob("*.yaml"):
        assert load_rl_study(path).cells


@pytest.mark.parametrize(("make", "message"), [
    (lambda: PGD(eps=0.1, step_size=0.0), "pgd: step_size must be a number > 0, got 0.0"),
    (lambda: PGD(eps=0.1, rel_step=-1.0), "pgd: rel_step must be a number > 0"),
    (lambda: FGSM(eps=0.1, step_size=0.0), "fgsm: step_size must be a number > 0"),
])
def test_attack_constructors_refuse_a_zero_step(make, message: str) -> None:
    """The Python API refuses the step sizes the CLI and study files refuse (an attack that
    never moves would report clean accuracy as robustness)."""
    with pytest.raises(ConfigError, match=message):
        make()
