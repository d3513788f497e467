"""KAF against the formula computed directly, gradients, ridge init, lazy parameters, memory."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact.activations import (
    KAF,
    KAFELU,
    KAFFree,
    KAFReLU,
    KAFSwish,
    activation_types,
    convert_activations,
    create_act,
    initialize_lazy,
)
from robustact.activations.kaf import (
    dictionary_grid,
    kaf,
    kaf_general,
    kaf_naive,
    resolve_gamma,
)
from robustact.errors import ConfigError
from robustact.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    """KAF runs many small ops per chunk; on a shared 2-core machine one thread is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def formula(x: torch.Tensor, alpha: torch.Tensor, d: torch.Tensor,
            gamma: torch.Tensor | float) -> torch.Tensor:
    """sum_i alpha[c, i] exp(-gamma_c (x - d[c, i])^2), one channel and one point at a time."""
    C, D = alpha.shape
    x64 = x.double()
    d = d.double().expand(C, D)
    g = torch.as_tensor(gamma, dtype=torch.float64).expand(C)
    out = torch.zeros_like(x64)
    for c in range(C):
        xc = x64[:, c]
        for i in range(D):
            out[:, c] += alpha[c, i].double() * torch.exp(-g[c] * (xc - d[c, i]) ** 2)
    return out


SHAPES = [(4, 3, 5, 6), (7, 5), (3, 4, 9)]  # conv, dense, 1-D conv


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("D", "boundary", "gamma"), [
    (20, 3.0, "thesis"), (20, 4.0, "reference"), (7, 2.0, 0.9), (40, 3.0, "thesis"),
    (20, 3.0, 60.0),  # a narrow kernel: the direct sum instead of the factorisation
])
def test_kaf_equals_the_formula(shape, D, boundary, gamma) -> None:
    torch.manual_seed(D + len(shape))
    C = shape[1]
    x = torch.randn(shape) * 2.5
    x.view(-1)[:4] = torch.tensor([boundary, -boundary, 9.0, -30.0])  # edges and far outside
    layer = KAF(C, D=D, boundary=boundary, gamma=gamma)
    g = resolve_gamma(gamma, D, boundary)
    grid = dictionary_grid(D, boundary, dtype=torch.float64)
    expected = formula(x, layer.alpha.detach(), grid, g)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=2e-5)
    # float64 end to end: agreement to rounding
    layer64 = copy.deepcopy(layer).double()
    torch.testing.assert_close(layer64(x.double()), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_kaf_free_equals_the_formula_with_moved_dictionary(shape) -> None:
    torch.manual_seed(1)
    C = shape[1]
    layer = KAFFree(C)
    with torch.no_grad():
        layer.dictionary.add_(0.1 * torch.randn_like(layer.dictionary))
        layer.gamma.mul_(1 + 0.2 * torch.rand_like(layer.gamma))
    x = torch.randn(shape) * 2.5
    expected = formula(x, layer.alpha.detach(), layer.dictionary.detach(), layer.gamma.detach())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=2e-5)


def test_gradcheck_fixed_dictionary() -> None:
    torch.manual_seed(2)
    x = (torch.randn(2, 3, 4, 4, dtype=torch.float64) * 2).requires_grad_()
    alpha = torch.randn(3, 20, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: kaf(x, a), (x, alpha))
    dense = (torch.randn(5, 4, dtype=torch.float64) * 2).requires_grad_()
    alpha4 = torch.randn(4, 9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: kaf(x, a, boundary=4.0, gamma="reference"),
                                    (dense, alpha4))


def test_gradcheck_free_dictionary_and_gamma() -> None:
    torch.manual_seed(3)
    x = (torch.randn(2, 3, 3, 4, dtype=torch.float64) * 2).requires_grad_()
    alpha = torch.randn(3, 20, dtype=torch.float64).requires_grad_()
    grid = dictionary_grid(20, 3.0, dtype=torch.float64)
    d = (grid + 0.05 * torch.randn(3, 20, dtype=torch.float64)).requires_grad_()
    g = (1.6 + 0.2 * torch.rand(3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(kaf_general, (x, alpha, d, g))
    # a shared dictionary and a scalar bandwidth reduce their gradients over the channels
    d1 = grid.clone().requires_grad_()
    g1 = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kaf_general, (x, alpha, d1, g1))


def test_gradients_reach_every_kaf_parameter_in_a_model() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), KAFFree(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                          KAFReLU(), nn.Linear(6, 3))
    x = torch.randn(5, 2, 6, 6)
    initialize_lazy(model, x)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1])).backward()
    free, relu = model[1], model[4]
    for name, p in [("alpha", free.alpha), ("dictionary", free.dictionary),
                    ("gamma", free.gamma), ("kaf_relu alpha", relu.alpha)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert dict(relu.named_parameters()).keys() == {"alpha"}  # fixed dictionary: not trained


def test_gradient_wrt_input_only_skips_the_parameter_gradients(monkeypatch) -> None:
    import robustact.activations.kaf_kernels as kaf_module

    seen = []
    original = kaf_module._grid_backward

    def spy(*args):
        seen.append(args[4:])  # (need_x, need_alpha)
        return original(*args)

    monkeypatch.setattr(kaf_module, "_grid_backward", spy)
    torch.manual_seed(10)
    layer = KAF(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    (attack_grad,) = torch.autograd.grad(layer(x).square().sum(), x)  # as an attack does
    assert seen[-1] == (True, False) and layer.alpha.grad is None
    layer(x).square().sum().backward()  # as training does
    assert seen[-1] == (True, True) and layer.alpha.grad is not None
    torch.testing.assert_close(attack_grad, x.grad)


# Measured max |KAF - f| on 4001 points over [-3, 3] (D=20, boundary 3, thesis gamma,
# ridge_eps 1e-4): ReLU 0.0523 (at the kink x=0), ELU 0.0169 and Swish 0.0168 (both near
# x=2.88, the edge; 0.0057 on |x| <= 2.5). At the dictionary points the errors are ~2e-3.
@pytest.mark.parametrize(("cls", "f", "bound"), [
    (KAFReLU, torch.relu, 0.06), (KAFELU, F.elu, 0.02), (KAFSwish, F.silu, 0.02),
])
def test_ridge_init_approximates_the_function(cls, f, bound) -> None:
    layer = cls(3)
    x = torch.linspace(-3.0, 3.0, 4001).view(-1, 1).expand(-1, 3).contiguous()
    with torch.no_grad():
        err = (layer(x) - f(x)).abs().max().item()
    assert err < bound
    assert torch.equal(layer.alpha[0], layer.alpha[2])  # the same function for every channel


def test_normal_init_is_seeded_and_has_the_reference_std() -> None:
    torch.manual_seed(5)
    a = KAF(64).alpha.detach().clone()
    torch.manual_seed(5)
    assert torch.equal(a, KAF(64).alpha.detach())
    assert 0.75 < a.std().item() < 0.85
    assert KAF(2, init_std=0.3, init="normal").init_std == 0.3


@pytest.mark.parametrize(("cls", "shape", "names"), [
    (KAF, (2, 5, 4, 4), {"alpha": (5, 20)}),
    (KAF, (3, 7), {"alpha": (7, 20)}),
    (KAFFree, (2, 6, 8), {"alpha": (6, 20), "dictionary": (6, 20), "gamma": (6,)}),
])
def test_lazy_parameters_come_from_the_first_input(cls, shape, names) -> None:
    layer = cls()
    assert layer.num_parameters is None and layer.has_uninitialized_params()
    assert "lazy" in repr(layer)
    layer(torch.randn(shape))
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == names
    assert layer.num_parameters == shape[1]
    if cls is KAFFree:
        torch.testing.assert_close(layer.dictionary[3], dictionary_grid(20, 3.0))
        assert torch.allclose(layer.gamma, torch.tensor(resolve_gamma("thesis", 20, 3.0)))
    with pytest.raises(ConfigError, match=r"coefficients for \d+ channels but the input has"):
        layer(torch.randn(2, shape[1] + 1, *shape[2:]))


def test_initialize_lazy_restores_modes_and_counts() -> None:
    model = create_model("small_cnn", act_layer="kaf").train()
    model.classifier.eval()  # a mixed state must come back as it was
    assert initialize_lazy(model, torch.rand(2, 1, 28, 28)) == 3
    assert model.training and not model.classifier.training and model.features.training
    assert initialize_lazy(model, torch.rand(2, 1, 28, 28)) == 0
    bn = model.features[1]
    assert bn.num_batches_tracked.item() == 0  # ran in eval mode: no statistics updated


def test_state_dict_round_trip_into_a_fresh_lazy_model() -> None:
    torch.manual_seed(6)
    x = torch.rand(3, 1, 28, 28)
    model = create_model("small_cnn", act_layer="kaf_free")
    initialize_lazy(model, x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = create_model("small_cnn", act_layer="kaf_free")
    assert fresh.features[2].has_uninitialized_params()
    fresh.load_state_dict(state)
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    # deep copies, lazy or materialised, are independent working modules
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    lazy_twin = copy.deepcopy(create_model("small_cnn", act_layer="kaf"))
    initialize_lazy(lazy_twin, x)
    assert lazy_twin.features[2].alpha.shape == (32, 20)


def test_checkpoint_carries_boundary_and_gamma() -> None:
    source = KAF(4, boundary=4.0, gamma="reference")
    target = KAF()
    target.load_state_dict(source.state_dict())
    assert (target.boundary, target.gamma_value) == (4.0, source.gamma_value)
    x = torch.randn(5, 4) * 3
    torch.testing.assert_close(target(x), source(x))
    with pytest.raises(ConfigError, match="trainable_dict"):
        KAFFree().load_state_dict(source.state_dict(), strict=False)


def test_convert_small_cnn_to_kaf_relu_trains() -> None:
    torch.manual_seed(7)
    relu_params = sum(p.numel() for p in create_model("small_cnn").parameters())
    model = convert_activations(create_model("small_cnn"), "kaf_relu")
    x = torch.rand(4, 1, 28, 28)
    assert initialize_lazy(model, x) == 3
    kafs = [m for m in model.modules() if isinstance(m, KAFReLU)]
    assert [m.num_parameters for m in kafs] == [32, 64, 128]
    assert sum(p.numel() for p in model.parameters()) == relu_params + (32 + 64 + 128) * 20
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    free = convert_activations(create_model("small_cnn"), "kaf_free")
    initialize_lazy(free, x)
    extra = sum(p.numel() for p in free.parameters()) - relu_params
    assert extra == (32 + 64 + 128) * (2 * 20 + 1)  # alpha, dictionary (C, D), gamma (C,)


def test_registry_names_and_activation_types() -> None:
    for name, cls in [("kaf", KAF), ("kaf_relu", KAFReLU), ("kaf_elu", KAFELU),
                      ("kaf_swish", KAFSwish), ("kaf_silu", KAFSwish), ("kaf_free", KAFFree)]:
        assert type(create_act(name)) is cls
    assert {KAF, KAFReLU, KAFELU, KAFSwish, KAFFree} <= set(activation_types())
    assert create_act("kaf", D=12, boundary=4.0).D == 12


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"D": 1}, "D must be an integer >= 2"),
    ({"D": 2.5}, "D must be an integer >= 2"),
    ({"boundary": 0}, "boundary must be a number > 0"),
    ({"boundary": -3.0}, "boundary must be a number > 0"),
    ({"gamma": "wide"}, "gamma must be 'thesis', 'reference' or a number"),
    ({"gamma": -1.0}, "gamma must be a finite number > 0"),
    ({"init": "tanh"}, "init must be one of normal, relu, elu, swish or a callable"),
    ({"ridge_eps": -1e-4}, "ridge_eps must be a number >= 0"),
    ({"num_parameters": 0}, "num_parameters must be a positive integer"),
])
def test_bad_arguments_raise_config_error(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        create_act("kaf", **kwargs)


def test_bad_inputs_and_fixed_variant_arguments() -> None:
    with pytest.raises(ConfigError, match="batched input"):
        KAF()(torch.randn(5))
    with pytest.raises(ConfigError, match="kaf_relu fixes init='relu'"):
        KAFReLU(init="elu")
    with pytest.raises(ConfigError, match="kaf_free fixes trainable_dict=True"):
        KAFFree(trainable_dict=False)
    with pytest.raises(ConfigError, match="channels but the input has"):
        KAF(3)(torch.randn(2, 4))


def test_extreme_inputs_stay_finite_and_nan_propagates() -> None:
    x = torch.tensor([[float("inf"), -float("inf"), 1e30, -1e30, 0.5]]).T.contiguous()
    for layer in (KAF(1), KAFFree(1)):
        xr = x.clone().requires_grad_()
        y = layer(xr)
        assert torch.isfinite(y).all() and y[:4].abs().max() < 1e-6
        y.sum().backward()
        assert torch.isfinite(xr.grad).all() and xr.grad[:4].abs().max() < 1e-6
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        assert layer(torch.tensor([[float("nan")]])).isnan().all()


def test_autocast_bfloat16_returns_the_input_dtype() -> None:
    torch.manual_seed(8)
    layer = KAFSwish(4)
    x = torch.randn(3, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=2e-2, atol=2e-2)


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn(x)`` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


@pytest.mark.parametrize("cls", [KAF, KAFFree])
def test_backward_saves_about_the_input_not_d_times_it(cls) -> None:
    torch.manual_seed(9)
    layer = cls(16)
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    ours = saved_bytes(layer, x)
    assert x.nbytes <= ours <= 1.05 * x.nbytes  # x itself plus the (16, 20) parameters
    d = layer.dictionary if cls is KAFFree else dictionary_grid(20, 3.0)
    g = layer.gamma if cls is KAFFree else layer.gamma_value
    naive = saved_bytes(lambda t: kaf_naive(t, layer.alpha, d, g), x)
    assert naive >= 20 * x.nbytes
