"""Post hoc defenses: apply/remove on real models, and each baseline of the SAP paper's appendix B
against its definition (tolerances: 5 standard errors of the Monte-Carlo estimate, as in
test_sap.py; the sample std of n normal draws has standard error ~ s / sqrt(2 n))."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from robustact.activations import count_activations
from robustact.attacks.wrappers import is_randomized
from robustact.defenses import (
    SAP,
    DefendedActivation,
    ReLUSAP,
    applied_defenses,
    apply_defense,
    apply_sap,
    batch_shared_randomness,
    list_defenses,
    posthoc,
    remove_defense,
    remove_sap,
    sap,
    sap_keep_probability,
)
from robustact.errors import ConfigError, UnknownNameError
from robustact.models import create_model

PARAMS = {"sap": {"frac": 0.5}, "dro": {"p": 0.2}, "rna": {"s": 0.1}, "rsa": {"s": 0.1},
          "rnw": {"s": 0.01}, "rsw": {"s": 0.1}, "dwp": {"keep": 0.7}, "swp": {"frac": 1.0}}
STOCHASTIC = {"sap", "dro", "rna", "rsa", "rnw", "rsw", "swp"}
BATCH_SHARED = {"rnw", "rsw", "swp"}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn").eval()


def _snapshot(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor], str]:
    state = model.state_dict()
    return list(state), {k: v.clone() for k, v in state.items()}, repr(model)


def _assert_restored(model: nn.Module, snapshot: tuple, params: dict[str, nn.Parameter],
                     x: torch.Tensor, y: torch.Tensor) -> None:
    keys, values, text = snapshot
    state = model.state_dict()
    assert list(state) == keys
    assert all(torch.equal(state[k], values[k]) for k in keys)
    assert repr(model) == text
    assert all(p is params[n] for n, p in model.named_parameters())
    assert torch.equal(model(x), y)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._state_dict_hooks and not module._load_state_dict_pre_hooks
        assert "weight" not in module.__dict__


def test_registry() -> None:
    assert list_defenses() == sorted(PARAMS)
    with pytest.raises(UnknownNameError, match="valid names: dro, dwp"):
        apply_defense(nn.Sequential(nn.ReLU()), "gaussian")


def test_apply_sap_wraps_every_activation(cnn: nn.Module) -> None:
    x = torch.rand(8, 1, 28, 28)
    sites = count_activations(cnn)
    assert sites == 3
    relus = [m for m in cnn.modules() if isinstance(m, nn.ReLU)]
    assert not is_randomized(cnn, x)
    assert apply_sap(cnn, 0.5) is cnn
    wrappers = [m for m in cnn.modules() if isinstance(m, DefendedActivation)]
    saps = [m for m in cnn.modules() if isinstance(m, SAP)]
    assert len(wrappers) == len(saps) == sites
    assert [w.act for w in wrappers] == relus  # the same ReLU modules, inside the wrappers
    assert all(w.defense.frac == 0.5 for w in wrappers)
    assert is_randomized(cnn, x)
    assert applied_defenses(cnn) == ["sap"]
    assert not batch_shared_randomness(cnn)


def test_remove_sap_restores_exactly(cnn: nn.Module) -> None:
    x = torch.rand(8, 1, 28, 28)
    y, snapshot, params = cnn(x), _snapshot(cnn), dict(cnn.named_parameters())
    apply_sap(cnn)
    assert not torch.equal(cnn(x), y)
    assert remove_sap(cnn) is cnn
    _assert_restored(cnn, snapshot, params, x, y)
    assert not is_randomized(cnn, x)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_state_dict_is_the_undefended_models(cnn: nn.Module, name: str) -> None:
    keys, values, _ = _snapshot(cnn)
    apply_defense(cnn, name, **PARAMS[name])
    state = cnn.state_dict()
    assert list(state) == keys and all(torch.equal(state[k], values[k]) for k in keys)
    fresh = create_model("small_cnn")
    fresh.load_state_dict(state)  # strict: loads into the undefended model ...
    defended = apply_defense(create_model("small_cnn"), name, **PARAMS[name])
    before = list(state)
    defended.load_state_dict(state)  # ... and into a defended one
    assert list(state) == before  # the caller's dict is not renamed
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                  remove_defense(defended).state_dict().values(),
                                                  strict=True))


def test_wrapped_activation_parameters_keep_their_keys() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2))
    keys = list(model.state_dict())
    apply_sap(model)
    assert isinstance(model[1], DefendedActivation)
    assert list(model.state_dict()) == keys  # "1.weight", not "1.act.weight"
    assert "1.act.weight" in dict(model.named_parameters())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_defense_is_removed_exactly(cnn: nn.Module, name: str) -> None:
    x = torch.rand(6, 1, 28, 28)
    y, snapshot, params = cnn(x), _snapshot(cnn), dict(cnn.named_parameters())
    apply_defense(cnn, name, **PARAMS[name])
    assert applied_defenses(cnn) == [name]
    assert is_randomized(cnn, x) == (name in STOCHASTIC)
    assert batch_shared_randomness(cnn) == (name in BATCH_SHARED)
    cnn.train()
    cnn(x)  # train mode too (BatchNorm's running statistics change; restored below)
    cnn.eval()
    cnn.load_state_dict(snapshot[1])
    remove_defense(cnn)
    _assert_restored(cnn, snapshot, params, x, y)


def test_defenses_stack_and_are_removed_by_name(cnn: nn.Module) -> None:
    x = torch.rand(4, 1, 28, 28)
    y = cnn(x)
    apply_defense(cnn, "dwp", keep=0.5)
    apply_sap(cnn)
    assert applied_defenses(cnn) == ["dwp", "sap"]
    remove_sap(cnn)
    assert applied_defenses(cnn) == ["dwp"]
    assert not is_randomized(cnn, x) and not torch.equal(cnn(x), y)
    remove_defense(cnn, "dwp")
    assert applied_defenses(cnn) == [] and torch.equal(cnn(x), y)
    assert remove_defense(cnn) is cnn  # nothing to remove: unchanged


def test_errors(cnn: nn.Module) -> None:
    with pytest.raises(ConfigError, match="has no activation modules"):
        apply_sap(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ConfigError, match="has no conv/linear layers"):
        apply_defense(nn.Sequential(nn.ReLU()), "rnw", s=0.1)
    with pytest.raises(ConfigError, match="needs s"):
        apply_defense(cnn, "rnw")
    with pytest.raises(ConfigError, match="unknown ratio"):
        apply_defense(cnn, "sap", ratio=0.5)
    with pytest.raises(ConfigError, match="keep must be in"):
        apply_defense(cnn, "dwp", keep=0.0)
    with pytest.raises(ConfigError, match="p must be in"):
        apply_defense(cnn, "dro", p=1.0)
    with pytest.raises(ConfigError, match="s must be"):
        apply_defense(cnn, "rna", s=-1)
    assert applied_defenses(cnn) == []  # failed calls changed nothing
    apply_sap(cnn)
    with pytest.raises(ConfigError, match=r"already carries a defense \(sap\)"):
        apply_defense(cnn, "dro", p=0.1)
    apply_defense(cnn, "rnw", s=0.01)
    with pytest.raises(ConfigError, match="remove_defense"):
        apply_defense(cnn, "dwp", keep=0.5)


def test_shared_activation_and_existing_sap_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), act, nn.Linear(3, 3), act, SAP(), ReLUSAP())
    # as if SAP layers were registered activations: apply_sap must still skip them
    monkeypatch.setattr(posthoc, "is_activation", lambda m: isinstance(m, nn.ReLU | SAP))
    apply_sap(model)
    assert isinstance(model[1], DefendedActivation) and model[1] is model[3]
    assert type(model[4]) is SAP and type(model[5]) is ReLUSAP
    remove_sap(model)
    assert model[1] is act and model[3] is act


def test_models_built_with_sap_are_not_defended_twice() -> None:
    model = nn.Sequential(nn.Linear(3, 3), ReLUSAP(), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="SAP built into the model"):
        apply_sap(model)


def test_relu_sap_layer() -> None:
    x = torch.randn(4, 30, generator=_gen(13))
    layer = ReLUSAP(0.5, generator=_gen(14))
    assert torch.equal(layer(x), sap(torch.relu(x), 0.5, generator=_gen(14)))
    assert layer.randomized and repr(layer) == "ReLUSAP(frac=0.5, method=multinomial, generator)"


def test_deepcopy_is_independent(cnn: nn.Module) -> None:
    x = torch.rand(4, 1, 28, 28)
    y = cnn(x)
    apply_defense(cnn, "rnw", s=0.05)
    apply_sap(cnn)
    twin = copy.deepcopy(cnn)
    remove_defense(twin)
    assert torch.equal(twin(x), y)
    assert applied_defenses(cnn) == ["rnw", "sap"] and is_randomized(cnn, x)
    remove_defense(cnn)
    assert torch.equal(cnn(x), y)


def _eye_probe(layer: nn.Linear) -> torch.Tensor:
    """The weight a bias-free Linear uses in one forward: (out, in)."""
    return layer(torch.eye(layer.in_features)).T


def test_dro_drops_the_expected_fraction_in_eval_mode() -> None:
    model = nn.Sequential(nn.ReLU()).eval()
    apply_defense(model, "dro", p=0.3, generator=_gen(1))
    n = 200_000
    out = model(torch.ones(1, n))
    dropped = (out == 0).double().mean()
    assert abs(dropped - 0.3) <= 5 * (0.3 * 0.7 / n) ** 0.5
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))


def test_rna_and_rsa_noise_statistics() -> None:
    n, s = 200_000, 0.2
    x = torch.rand(1, n) + 0.5
    for name, noise in (("rna", lambda out: out - x), ("rsa", lambda out: out / x - 1)):
        model = apply_defense(nn.Sequential(nn.ReLU()).eval(), name, s=s, generator=_gen(2))
        eta = noise(model(x)).double()
        assert abs(eta.mean()) <= 5 * s / n**0.5
        assert abs(eta.std() - s) <= 5 * s / (2 * n) ** 0.5


def test_rnw_fresh_noise_at_every_forward_stored_weights_unchanged() -> None:
    torch.manual_seed(3)
    layer = nn.Linear(200, 300, bias=False)
    stored, param = layer.weight.detach().clone(), layer.weight
    model = apply_defense(nn.Sequential(layer), "rnw", s=0.05, generator=_gen(4))
    first, second = _eye_probe(layer), _eye_probe(layer)
    assert not torch.equal(first, second)
    assert layer.weight is param and torch.equal(layer.weight, stored)  # never written
    eta = (first - stored).double()
    n = eta.numel()
    assert abs(eta.mean()) <= 5 * 0.05 / n**0.5
    assert abs(eta.std() - 0.05) <= 5 * 0.05 / (2 * n) ** 0.5  # s absolute, not relative
    remove_defense(model)
    assert torch.equal(_eye_probe(layer), stored)


def test_rsw_scales_by_one_mean_gaussian() -> None:
    layer = nn.Linear(200, 300, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(300, 200).sign() * 2)
    apply_defense(nn.Sequential(layer), "rsw", s=0.1, generator=_gen(5))
    eta = (_eye_probe(layer) / layer.weight - 1).double()
    n = eta.numel()
    assert abs(eta.mean()) <= 5 * 0.1 / n**0.5
    assert abs(eta.std() - 0.1) <= 5 * 0.1 / (2 * n) ** 0.5


def test_dwp_keeps_the_largest_fraction() -> None:
    torch.manual_seed(6)
    layer = nn.Linear(40, 25, bias=False)
    model = apply_defense(nn.Sequential(layer), "dwp", keep=0.3)
    used = _eye_probe(layer)
    assert torch.equal(used, _eye_probe(layer))  # deterministic
    kept = used != 0
    assert kept.sum() == round(0.3 * 1000)
    w = layer.weight.abs()
    assert w[kept].min() > w[~kept].max()
    assert torch.equal(used[kept], layer.weight[kept])
    model(torch.randn(3, 40)).sum().backward()
    assert torch.all(layer.weight.grad[~kept] == 0) and torch.all(layer.weight.grad[kept] != 0)


def test_swp_is_sap_on_each_weight_tensor() -> None:
    torch.manual_seed(7)
    layer = nn.Linear(30, 20, bias=False)
    apply_defense(nn.Sequential(layer), "swp", frac=0.5, generator=_gen(8))
    used = _eye_probe(layer)
    kept = used != 0
    q = sap_keep_probability(layer.weight.detach().reshape(1, -1), 0.5).view_as(used)
    assert 0 < kept.sum() < used.numel()
    assert torch.allclose(used[kept], (layer.weight / q)[kept])
    # unbiased over draws: 5 standard errors of the mean, per entry
    draws = 300
    total = sum(_eye_probe(layer).detach().double() for _ in range(draws))
    w = layer.weight.detach().double()
    se = (w**2 * (1 - q.double()) / q.double() / draws).sqrt()
    assert torch.all((total / draws - w).abs() <= 5 * se + 1e-9)


def test_generator_makes_weight_noise_reproducible() -> None:
    torch.manual_seed(9)
    x = torch.randn(4, 10)
    outs = []
    for seed in (10, 10, 11):
        model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))
        model.load_state_dict(dict(zip(model.state_dict(), _weights(), strict=True)))
        apply_defense(model, "rnw", s=0.1, generator=_gen(seed))
        outs.append(model(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def _weights() -> list[torch.Tensor]:
    g = _gen(12)
    return [torch.randn(10, 10, generator=g), torch.randn(10, generator=g),
            torch.randn(3, 10, generator=g), torch.randn(3, generator=g)]


def test_eot_recomputation_sees_the_same_sap_draws() -> None:
    # EOT recomputes chunks in backward under the restored global RNG state, so SAP (drawing
    # from the global RNG) must give the gradient of the very forward it returned
    from robustact.attacks.wrappers import EOT

    torch.manual_seed(15)
    model = apply_sap(nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3)), 0.5)
    x = torch.randn(5, 6)
    grads = []
    for checkpoint in (True, False):
        torch.manual_seed(16)
        xr = x.clone().requires_grad_()
        out = EOT(model, n=8, max_batch=10, checkpoint=checkpoint)(xr)
        grads.append((out, torch.autograd.grad(out.square().sum(), xr)[0]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_list_defenses_shows_every_registered_defense_with_its_parameters(
        capsys: pytest.CaptureFixture[str]) -> None:
    from robustact.cli import main
    from robustact.defenses import list_defenses

    assert main(["list", "defenses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == list_defenses()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["sap"][1:4] == ["activation", "frac=1.0,", "method=multinomial"]
    assert rows["rnw"][1:3] == ["weight", "s"]


def test_attack_cli_applies_a_posthoc_defense_as_the_python_api_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``attack --sap 1.0``: the same robust accuracy as apply_sap + evaluate on the same
    points and seed; ``--defense`` with a bad value is one line before any work."""
    import json

    from robustact.cli import main
    from robustact.data import BatchLoader, load_dataset
    from robustact.eval import evaluate
    from robustact.eval.robustness import collect
    from robustact.models.checkpoint import load_model

    run = tmp_path / "run"
    assert main(["train", "--model", "small_cnn", "--train-subset", "512", "--test-subset", "64",
                 "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(run)]) == 0
    flags = ["--suite", "none", "--attack", "pgd:steps=5,eot=4", "--samples", "4", "--eps",
             "0.1", "-n", "24", "--seed", "3", "--no-diagnostics", "--device", "cpu"]
    assert main(["attack", "--checkpoint", str(run), "--sap", "1.0", *flags,
                 "--out", str(tmp_path / "sap")]) == 0
    record = json.loads((tmp_path / "sap.json").read_text())
    assert record["defense"] == {"defense": "sap", "frac": 1.0} and record["randomized"]
    model, _ = load_model(run, torch.device("cpu"))
    apply_sap(model, frac=1.0)
    x, y = collect(BatchLoader(load_dataset("fashion_mnist", "test").subset(24), 512), 24)
    report = evaluate(model, (x, y), ["pgd:steps=5,eot=4"], [0.1], n_samples=4, seed=3,
                      diagnose=False)
    cli_rows = {r["attack"]: (r["robust_accuracy"], r["robust"]) for r in record["rows"]}
    api_rows = {r["attack"]: (r["robust_accuracy"], r["robust"]) for r in report.rows()}
    assert cli_rows == api_rows and "worst_case" in cli_rows
    capsys.readouterr()
    assert main(["attack", "--checkpoint", str(run), "--defense", "rnw:s=-1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --defense: "), err
    assert main(["attack", "--checkpoint", str(run), "--defense", "nosuch", *flags]) == 2
    assert "unknown defense 'nosuch'" in capsys.readouterr().err
