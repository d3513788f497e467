"""Any model on the command line: --model-factory, --model-arg, --weights and --normalize on
``robustact attack`` / ``eval``, an ``external:`` study cell and a transfer surrogate.

The end-to-end case: a network defined in tests/external_net.py is trained for a few steps,
saved as a state dict (and as safetensors), attacked from the command line, and its robust
accuracy and per-example outcomes match the Python API's on the same points.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from external_net import tiny_cnn
from robustact.attacks import PGD
from robustact.cli import main
from robustact.data import load_dataset
from robustact.errors import CheckpointError, ConfigError
from robustact.models.external import ModelSpec, NormalizedModel, build_external, parse_normalize

TESTS = Path(__file__).parent
MEAN, STD = 0.286, 0.353  # Fashion-MNIST's, as the user's network expects them
N, EPS, STEPS = 32, 0.05, 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny_cnn(width=6) trained for 30 steps; its weights as .pt (DataParallel-wrapped, as
    users' files often are) and .safetensors."""
    torch.manual_seed(0)
    model = tiny_cnn(width=6)
    train = load_dataset("fashion_mnist", "train").subset(30 * 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(30):
        x, y = train.images[i * 32:(i + 1) * 32].float() / 255, train.labels[i * 32:(i + 1) * 32]
        loss = torch.nn.functional.cross_entropy(model((x - MEAN) / STD), y.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    root = tmp_path_factory.mktemp("user_model")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "w.pt")
    save_file(state, str(root / "w.safetensors"))
    return {"root": root, "pt": root / "w.pt", "st": root / "w.safetensors"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "robustact", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _python_api(weights: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean-correct, robust) per example, by the library's objects directly."""
    net = tiny_cnn(width=6)
    state = torch.load(weights, weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model = NormalizedModel(net, (MEAN,), (STD,)).eval()
    test = load_dataset("fashion_mnist", "test").subset(N)
    x, y = test.images.float() / 255, test.labels.long()
    correct = model(x).argmax(1) == y
    result = PGD(eps=EPS, steps=STEPS, random_start=False)(model, x, y)
    return correct, correct & ~result.success.cpu()


@pytest.mark.parametrize("kind", ["pt", "st"])
def test_cli_attack_of_a_user_model_matches_the_python_api(trained: dict[str, Path],
                                                            kind: str) -> None:
    out = trained["root"] / f"robustness-{kind}"
    done = _cli("attack", "--model-factory", "external_net:tiny_cnn", "--model-arg", "width=6",
                "--weights", str(trained[kind]), "--normalize", f"{MEAN},{STD}",
                "--dataset", "fashion_mnist", "--suite", "none", "--attack",
                f"pgd:steps={STEPS},random_start=false", "--eps", str(EPS), "-n", str(N),
                "--no-diagnostics", "--device", "cpu", "--out", str(out), cwd=trained["root"])
    assert done.returncode == 0, done.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    correct, robust = _python_api(trained["pt"])
    assert record["checkpoint"] == "external_net:tiny_cnn(width=6)"
    assert record["clean_correct"] == correct.int().tolist()
    pgd = next(r for r in record["rows"] if r["attack"] == "pgd")
    assert pgd["robust"] == int(robust.sum())
    assert 0 < int(robust.sum()) < int(correct.sum())  # the attack does something, not all
    assert int(correct.sum()) > N // 2  # trained: better than chance


def test_cli_eval_of_a_user_model(trained: dict[str, Path]) -> None:
    done = _cli("eval", "--model-factory", "external_net:tiny_cnn", "--model-arg", "width=6",
                "--weights", str(trained["st"]), "--normalize", "fashion_mnist",
                "--dataset", "fashion_mnist", "--n", str(N), "--json", "--device", "cpu",
                cwd=trained["root"])
    assert done.returncode == 0, done.stderr
    correct, _ = _python_api(trained["pt"])
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(float(correct.float().mean()))


def test_study_cell_evaluates_an_external_model(trained: dict[str, Path]) -> None:
    study = trained["root"] / "study.yaml"
    study.write_text(f"""
name: ext
out: {trained['root'] / 'ext'}
train: {{model: small_cnn, dataset: fashion_mnist, device: cpu}}
cells:
  - id: mine
    external: {{factory: "external_net:tiny_cnn", args: {{width: 6}},
                weights: {trained['pt']}, normalize: {{mean: [{MEAN}], std: [{STD}]}}}}
evaluate: {{eps: [{EPS}], n: {N}, suite: none, diagnose: false,
            attacks: ["pgd:steps={STEPS},random_start=false"]}}
""")
    done = _cli("run", str(study), cwd=trained["root"])
    assert done.returncode == 0, done.stderr + done.stdout
    assert "not trained" in done.stdout
    record = json.loads((trained["root"] / "ext" / "mine" / "robustness.json").read_text())
    _, robust = _python_api(trained["pt"])
    assert next(r for r in record["rows"] if r["attack"] == "pgd")["robust"] == int(robust.sum())
    assert "| mine | external | not trained (external) |" in done.stdout
    again = _cli("run", str(study), cwd=trained["root"])  # done: reused, nothing recomputed
    assert again.returncode == 0 and "evaluated earlier" in again.stdout


def test_transfer_from_a_user_surrogate(trained: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from robustact.eval.spec import AttackSpec

    monkeypatch.syspath_prepend(str(TESTS))
    spec = AttackSpec.parse(f"transfer:surrogate=external_net:tiny_cnn,surrogate_weights="
                            f"{trained['pt']},surrogate_normalize=fashion_mnist,steps=3,"
                            "surrogate_args={width: 6}")
    attack = spec.build(EPS)
    assert isinstance(attack.surrogate, NormalizedModel)
    assert attack.surrogate_name == "external_net:tiny_cnn"


def test_registered_model_with_plain_weights(tmp_path: Path) -> None:
    from robustact.models import create_model

    model = create_model("small_cnn", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "s.pt")
    spec = ModelSpec("small_cnn", "fashion_mnist", weights=str(tmp_path / "s.pt"))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(build_external(spec)(x), model.eval()(x))


def test_normalize_forms() -> None:
    assert parse_normalize("0.5,0.25") == ((0.5,), (0.25,))
    assert parse_normalize("1,2,3,4,5,6") == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert parse_normalize({"mean": [0.1], "std": [0.2]}) == ((0.1,), (0.2,))
    assert parse_normalize("imagenet")[0] == pytest.approx((0.485, 0.456, 0.406))
    for bad in ("0.5", "0.5,0", "a,b", "nosuchdata"):
        with pytest.raises(ConfigError, match="normalize"):
            parse_normalize(bad)


@pytest.mark.parametrize("args, message", [
    (["--model-factory", "external_net:tiny_cnn"], "needs --dataset"),
    (["--weights", "w.pt", "--dataset", "fashion_mnist"], "give the model"),
    (["--checkpoint", "runs/x", "--weights", "w.pt"], "not both"),
    (["--model-factory", "no_such_module:f", "--dataset", "fashion_mnist"],
     "cannot import no_such_module"),
    (["--model-factory", "external_net:nope", "--dataset", "fashion_mnist"], "has no nope"),
    (["--model-factory", "external_net", "--dataset", "fashion_mnist"],
     "unknown model|registered"),
    (["--model-factory", "external_net:tiny_cnn", "--model-arg", "depth=3",
      "--dataset", "fashion_mnist"], "refused the arguments"),
    (["--model-factory", "external_net:tiny_cnn", "--weights", "missing.pt",
      "--dataset", "fashion_mnist"], "missing.pt not found"),
    (["--model-factory", "external_net:tiny_cnn", "--normalize", "0.5",
      "--dataset", "fashion_mnist"], "--normalize"),
    (["--model-factory", "external_net:tiny_cnn", "--normalize", "0.1,0.2,0.3,0.4,0.5,0.6",
      "--dataset", "fashion_mnist"], "3 means and stds but fashion_mnist images have 1"),
])
def test_bad_model_flags_are_one_line(args: list[str], message: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    code = main(["eval", *args, "--n", "4", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(message, err), err


def test_weights_that_do_not_fit_are_one_line(trained: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec("external_net:tiny_cnn", "fashion_mnist", {"width": 4},
                     str(trained["pt"]))
    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_external(spec)


def test_registered_robustbench_model_reads_a_robustbench_file(tmp_path: Path) -> None:
    """``--model-factory preact_resnet18 --weights FILE``: the file's RobustBench form (module.
    prefixes, mu/sigma buffers) is mapped as load_robustbench_state maps it."""
    from robustact.models import load_robustbench_state
    from test_robustbench import FILE_MEAN, FILE_STD, logits, preact_shapes, random_state

    state = random_state(preact_shapes())
    state["mu"] = torch.tensor(FILE_MEAN).view(1, 3, 1, 1)
    state["sigma"] = torch.tensor(FILE_STD).view(1, 3, 1, 1)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "rb.pt")
    model = build_external(ModelSpec("preact_resnet18", "cifar10", weights=str(tmp_path / "rb.pt")))
    reference = load_robustbench_state("preact_resnet18", tmp_path / "rb.pt")
    assert torch.equal(logits(model), logits(reference))
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(FILE_MEAN))


@pytest.mark.parametrize("block, message", [
    ('{factory: "no_such_module:f"}', "cell mine, external: model factory .*cannot import"),
    ('{factory: "external_net:tiny_cnn", weights: missing.pt}', "missing.pt not found"),
    ('{factory: "external_net:tiny_cnn", normalize: "0.5"}', "normalize"),
    ('{factory: "external_net:tiny_cnn", colour: red}', "unknown key"),
    ('"external_net:tiny_cnn"', "must be a mapping"),
])
def test_external_cells_are_checked_when_the_study_is_read(block: str, message: str,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from robustact.study import load_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    study = tmp_path / "s.yaml"
    study.write_text(f"cells: [{{id: mine, external: {block}}}]\nevaluate: {{eps: [0.1]}}\n")
    with pytest.raises(ConfigError, match=message):
        load_study(study)
