"""evaluate(): sequential/independent semantics, intervals, randomized models, diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.eval import AttackSpec, evaluate, wilson_interval
from robustact.eval.diagnostics import NO_MASKING
from robustact.report.robustness import robustness_table


class Quantize(nn.Module):
    """Rounds inputs to a few grey levels: zero gradient everywhere (a masking input layer).
    It declares the identity as its BPDA surrogate."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Noisy(nn.Module):
    """Adds Gaussian noise even in eval mode: a randomized model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.randn_like(x)


def test_wilson_interval_closed_form() -> None:
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 103.8415, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-3), pytest.approx(0.5962, abs=1e-3))


def test_spec_parsing() -> None:
    spec = AttackSpec.parse("pgd:steps=40,restarts=2,eot=8,bpda=true,loss=margin")
    assert spec.name == "pgd" and spec.kwargs == {"steps": 40, "restarts": 2, "loss": "margin"}
    assert spec.eot == 8 and spec.bpda and spec.label == "pgd+eot8+bpda"
    with pytest.raises(ConfigError, match="share a label"):
        evaluate(nn.Linear(4, 2), (torch.rand(2, 4), torch.zeros(2, dtype=torch.long)),
                 ["pgd", "pgd:steps=3"], [0.1])


def test_sequential_and_independent(relu_cnn: nn.Module, fmnist_test: tuple) -> None:
    x, y = fmnist_test
    data = (x[:100], y[:100])
    seq = evaluate(relu_cnn, data, ["fgsm", "pgd:steps=10"], [0.05], diagnose=False)
    fgsm, pgd = seq.outcomes
    assert torch.equal(fgsm.attacked, seq.clean_correct)
    assert torch.equal(pgd.attacked, fgsm.correct)  # only the points FGSM left robust
    assert torch.equal(seq.worst_case(0.05), pgd.correct)
    assert pgd.robust_accuracy <= fgsm.robust_accuracy <= seq.clean_accuracy
    ind = evaluate(relu_cnn, data, ["fgsm", "pgd:steps=10"], [0.05], sequential=False,
                   diagnose=False)
    assert torch.equal(ind.outcomes[1].attacked, ind.clean_correct)
    assert torch.equal(ind.worst_case(0.05), ind.outcomes[0].correct & ind.outcomes[1].correct)
    for row in seq.rows():
        assert row["ci_low"] <= row["robust_accuracy"] <= row["ci_high"]
    assert "worst case" in robustness_table(seq)  # rendered by the report layer


def test_diagnostics_stay_silent_on_a_plain_relu_network(relu_cnn: nn.Module,
                                                        fmnist_test: tuple) -> None:
    report = evaluate(relu_cnn, fmnist_test, ["fgsm", "pgd:steps=20", "square:queries=300"],
                      [0.15], probe_size=100)
    assert report.diagnostics.verdict == NO_MASKING, report.diagnostics.summary()


def test_diagnostics_fire_on_a_quantizing_input_layer(relu_cnn: nn.Module,
                                                      fmnist_test: tuple) -> None:
    masked = nn.Sequential(Quantize(), relu_cnn).eval()
    x, y = fmnist_test
    report = evaluate(masked, (x[:100], y[:100]), ["pgd:steps=10", "square:queries=300"], [0.15],
                      probe_size=60)
    fired = {c.name for c in report.diagnostics.fired}
    assert {"bad_gradients", "blackbox_beats_whitebox", "loss_not_rising"} <= fired
    assert report.diagnostics.verdict.startswith("gradient masking suspected: ")
    # BPDA (the identity surrogate of the rounding) restores the white-box attack
    plain = report.accuracy("pgd", 0.15)
    bpda = evaluate(masked, (x[:100], y[:100]), ["pgd:steps=10,bpda=true"], [0.15],
                    diagnose=False)
    assert bpda.accuracy("pgd+bpda", 0.15) < plain - 0.2


def test_diagnostics_flag_a_near_constant_model(relu_cnn: nn.Module,
                                                fmnist_test: tuple) -> None:
    """A diverged network that answers one class looks robust: no attack changes a constant
    answer. The diagnostics say its robust accuracy is not meaningful."""
    x, y = fmnist_test
    x, y = x[:100], y[:100]
    biased = nn.Sequential(relu_cnn, nn.Linear(10, 10)).eval()
    with torch.no_grad():  # the logit of class 3 dwarfs the network's own logits
        biased[1].weight.copy_(0.01 * torch.eye(10))
        biased[1].bias.zero_()
        biased[1].bias[3] = 100.0
    report = evaluate(biased, (x, y), ["pgd:steps=10"], [0.15], probe_size=20)
    check = next(c for c in report.diagnostics.checks if c.name == "degenerate_predictions")
    assert check.fired and check.details["top_class"] == 3 and check.details["top_share"] == 1.0
    assert report.clean_accuracy == pytest.approx((y == 3).float().mean().item())
    assert report.diagnostics.verdict.startswith("robust accuracy not meaningful: ")
    healthy = evaluate(relu_cnn, (x, y), ["fgsm"], [0.15], probe_size=20)
    check = next(c for c in healthy.diagnostics.checks if c.name == "degenerate_predictions")
    assert not check.fired and check.details["accuracy"] > 0.5


def test_wrappers_leave_the_model_in_eval_mode(relu_cnn: nn.Module,
                                               fmnist_test: tuple) -> None:
    x, y = fmnist_test
    relu_cnn.eval()
    plain = evaluate(relu_cnn, (x[:60], y[:60]), ["pgd:steps=5"], [0.1], diagnose=False)
    wrapped = evaluate(relu_cnn, (x[:60], y[:60]), ["pgd:steps=5,bpda=true,eot=1"], [0.1],
                       diagnose=False)
    assert not relu_cnn.training
    # BPDA with nothing to substitute and EOT over one pass change nothing
    assert torch.equal(plain.outcomes[0].correct, wrapped.outcomes[0].correct)


def test_randomized_model_needs_eot(relu_cnn: nn.Module, fmnist_test: tuple) -> None:
    noisy = nn.Sequential(Noisy(), relu_cnn).eval()
    x, y = fmnist_test
    data = (x[:40], y[:40])
    without = evaluate(noisy, data, ["pgd:steps=5"], [0.1], n_samples=8, probe_size=20)
    assert "randomized_without_eot" in {c.name for c in without.diagnostics.fired}
    with_eot = evaluate(noisy, data, ["pgd:steps=5,eot=8"], [0.1], n_samples=8, probe_size=20)
    check = next(c for c in with_eot.diagnostics.checks if c.name == "randomized_without_eot")
    assert not check.fired and check.details["randomized"]


def test_cli_attack_writes_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustact.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", "small_cnn", "--train-subset", "512", "--test-subset", "64",
                 "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["attack", "--checkpoint", str(run), "--suite", "none", "--attacks", "fgsm,pgd",
                 "--attack", "pgd:steps=5,loss=margin,label=pgd_margin", "--attack",
                 f"transfer:surrogate={run},steps=5", "--eps", "0.05,0.1", "--n", "40",
                 "--probe-size", "20", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "worst case" in printed and "verdict:" in printed
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["n"] == 40 and len(record["attacks"]) == 8
    transfer = [a for a in record["attacks"] if a["name"] == "transfer"]
    assert transfer[0]["gradient_free"] and transfer[0]["params"]["surrogate_name"] == str(run)
    assert record["diagnostics"]["verdict"]
    assert (tmp_path / "r.csv").read_text().startswith("attack,")
    assert main(["attack", "--checkpoint", str(run), "--attacks", "pgd", "--eps", "x"]) == 2
    assert "--eps 'x' is not a number" in capsys.readouterr().err
    # the default: the adaptive suite, the listed attacks beside it on every point
    assert main(["attack", "--checkpoint", str(run), "--attacks", "fgsm", "--eps", "0.1",
                 "--n", "12", "--probe-size", "8", "--device", "cpu",
                 "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "suite adaptive, then each listed attack on every point" in printed
    assert "the model is deterministic" in printed
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["suite"]["name"] == "adaptive" and record["n_samples"] == 1
    assert [(a["label"], a["group"]) for a in record["attacks"]] == [
        ("apgd_ce", "suite"), ("apgd_t", "suite"), ("square", "suite"), ("fgsm", "paper")]
    assert record["attacks"][-1]["attacked"] == record["clean_correct"]
    for argv, message in [(["--suite", "strong"], "unknown suite 'strong'; valid suites"),
                          (["--suite", "none"], "--suite none needs attacks"),
                          (["--attack", "pgd:targetd=true"], "has no option 'targetd'"),
                          (["--attack", "pgd:eot=0"], "eot must be an integer >= 1"),
                          (["--attack", "pgd:bpda=abc"], "bpda must be true or false"),
                          (["--samples", "0"], "--samples must be >= 1")]:
        assert main(["attack", "--checkpoint", str(run), "--eps", "0.1", "--n", "4",
                     "--device", "cpu", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_convergence_check_resolves_the_attacks_own_step_rule(relu_cnn: nn.Module,
                                                              fmnist_test: tuple) -> None:
    """BIM's steps="ceil" (the SAP paper's iterative attack) is a rule, not a number: the
    convergence check doubles the resolved count (ceil(eps / step) = 8 at eps 8/255) and keeps
    the attack's step (it crashed on int("ceil") in a study)."""
    x, y = fmnist_test
    report = evaluate(relu_cnn, (x[:40], y[:40]), ["fgsm", "bim:steps=ceil"], [8 / 255],
                      probe_size=20)
    check = next(c for c in report.diagnostics.checks if c.name == "not_converged")
    assert check.details["settings"]["steps"] == 16
    assert check.details["settings"]["step_size"] == pytest.approx(1 / 255)
