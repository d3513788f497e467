"""k-WTA against a brute-force reference (sort each vector, keep the k largest)."""

from __future__ import annotations

import math

import pytest
import torch

from robustact.activations import KWTA, create_act, set_kwta_ratio
from robustact.activations.kwta import kwta_ratios, winners_from_ratio
from robustact.errors import ConfigError
from robustact.train.config import SparsitySchedule


def brute_force(x: torch.Tensor, k: int, mode: str = "volume") -> torch.Tensor:
    """Per vector: sort descending, keep the entries at the k first positions, zero the rest."""
    if mode == "channel" and x.dim() > 2:
        rows = x.reshape(x.shape[0] * x.shape[1], -1)
    else:
        rows = x.reshape(x.shape[0], -1)
    out = torch.zeros_like(rows)
    for r in range(rows.shape[0]):
        order = sorted(range(rows.shape[1]), key=lambda j: -rows[r, j].item())
        for j in order[:k]:
            out[r, j] = rows[r, j]
    return out.view_as(x)


@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (4, 37), (2, 3, 7, 9), (5, 1, 1, 1)])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.2, 0.5, 1.0])
def test_volume_mode_matches_brute_force(shape: tuple[int, ...], ratio: float) -> None:
    torch.manual_seed(hash((shape, ratio)) % 2**31)
    x = torch.randn(shape, dtype=torch.float64)
    n = math.prod(shape[1:])
    k = max(1, math.floor(ratio * n + 1e-9))
    if math.floor(ratio * n + 1e-9) == 0:
        with pytest.raises(ConfigError, match="keeps no unit"):
            KWTA(ratio)(x)
        return
    y = KWTA(ratio)(x)
    assert torch.equal(y, brute_force(x, k))
    assert ((y != 0).reshape(shape[0], -1).sum(1) == k).all()


@pytest.mark.parametrize("shape", [(2, 4, 5, 5), (3, 2, 8, 8)])
def test_channel_mode_matches_brute_force(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    x = torch.randn(shape)
    k = math.floor(0.2 * shape[2] * shape[3])
    y = KWTA(0.2, mode="channel")(x)
    assert torch.equal(y, brute_force(x, k, mode="channel"))
    kept = (y != 0).reshape(shape[0], shape[1], -1).sum(-1)
    assert (kept == k).all()


def test_channel_mode_on_dense_input_uses_features() -> None:
    x = torch.randn(4, 50)
    assert torch.equal(KWTA(0.1, mode="channel")(x), brute_force(x, 5))


def test_large_layer_matches_topk() -> None:
    torch.manual_seed(2)
    x = torch.randn(8, 64, 14, 14)  # the selection kernel's fast path
    k = winners_from_ratio(0.1, x[0].numel())
    rows = x.view(8, -1)
    ref = torch.zeros_like(rows).scatter(1, rows.topk(k, dim=1).indices, rows.topk(k, dim=1).values)
    assert torch.equal(KWTA(0.1)(x).view(8, -1), ref)


def test_samples_are_independent() -> None:
    torch.manual_seed(3)
    x = torch.randn(6, 3, 5, 5)
    y = KWTA(0.2)(x)
    x2 = x.clone()
    x2[1:] = torch.randn(5, 3, 5, 5) * 100
    assert torch.equal(KWTA(0.2)(x2)[0], y[0])
    assert torch.equal(KWTA(0.2)(x[:1])[0], y[0])


def test_gradient_flows_only_through_retained_units() -> None:
    torch.manual_seed(4)
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 6, 6)
    y = KWTA(0.15)(x)
    (y * w).sum().backward()
    kept = brute_force(x.detach(), winners_from_ratio(0.15, 108)) != 0
    assert torch.equal(x.grad, torch.where(kept, w, torch.zeros(())))


def test_ties_at_threshold_are_all_kept() -> None:
    x = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0]])
    y = KWTA(k=2)(x)  # k-th largest is 3: every value >= 3 stays, as in the original code
    assert torch.equal(y, torch.tensor([[5.0, 3.0, 3.0, 3.0, 0.0]]))


def test_fixed_k_and_rounding() -> None:
    assert winners_from_ratio(0.1, 1280) == 128  # 0.1 * 1280 = 128.00000000000003
    assert winners_from_ratio(0.1, 15) == 1
    assert winners_from_ratio(0.1, 15, "ceil") == 2
    x = torch.randn(3, 40)
    assert ((KWTA(k=7)(x) != 0).sum(1) == 7).all()
    assert ((KWTA(0.1, rounding="ceil")(torch.randn(2, 15)) != 0).sum(1) == 2).all()


def test_bad_parameters_give_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\]"):
        KWTA(1.5)
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\]"):
        KWTA(0.0)
    with pytest.raises(ConfigError, match="keeps no unit of a layer with 8 units"):
        KWTA(0.1)(torch.randn(2, 8))
    with pytest.raises(ConfigError, match="k=20 is out of range for a layer with 8 units"):
        KWTA(k=20)(torch.randn(2, 8))
    with pytest.raises(ConfigError, match="mode must be one of"):
        KWTA(0.2, mode="pixel")
    with pytest.raises(ConfigError, match="batched input"):
        KWTA(0.2)(torch.randn(8))


def test_ratio_changes_during_training_and_is_saved() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(10, 100), KWTA(0.2), torch.nn.Linear(100, 3),
                              KWTA(1.0))
    assert set_kwta_ratio(net, 0.1) == 2
    assert kwta_ratios(net) == [0.1, 0.1]
    out = net[1](torch.randn(5, 100))
    assert ((out != 0).sum(1) == 10).all()
    fresh = torch.nn.Sequential(torch.nn.Linear(10, 100), KWTA(0.2), torch.nn.Linear(100, 3),
                                KWTA(1.0))
    fresh.load_state_dict(net.state_dict())
    assert kwta_ratios(fresh) == [0.1, 0.1]


def test_incremental_sparsity_schedule() -> None:
    paper = SparsitySchedule(start=0.2, target=0.1, step=0.005, every=2)
    ratios = [paper.ratio(e) for e in range(50)]
    assert ratios[:5] == [0.2, 0.2, 0.195, 0.195, 0.19]
    assert ratios[40] == 0.1 and min(ratios) == 0.1
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False))
    delayed = SparsitySchedule(start=0.2, target=0.1, step=0.01, every=1, begin_epoch=3)
    assert [delayed.ratio(e) for e in range(6)] == [0.2, 0.2, 0.2, 0.2, 0.19, 0.18]
    with pytest.raises(ConfigError, match="target"):
        SparsitySchedule(start=0.1, target=0.2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes(dtype: torch.dtype) -> None:
    x = torch.randn(3, 2, 4, 4).to(dtype)
    y = KWTA(0.25)(x)
    assert y.dtype == dtype
    assert torch.equal(y, brute_force(x, 8))


def test_registry_builds_kwta() -> None:
    act = create_act("kwta", ratio=0.1)
    assert isinstance(act, KWTA) and act.ratio == 0.1
    with pytest.raises(ConfigError, match="activation 'kwta'"):
        create_act("kwta", ratios=0.1)


@pytest.mark.parametrize("width", [128, 50])
def test_dense_layer_matches_brute_force_and_follows_changes(width: int) -> None:
    """A dense input (B, N) takes the layer's fast path, whose k per width is remembered: it
    still matches the brute force, also after ratio, k or rounding change, and after a load."""
    torch.manual_seed(width)
    x = torch.randn(6, width, dtype=torch.float32)
    layer = KWTA(0.1)
    settings = [({}, math.floor(0.1 * width)), ({"ratio": 0.2}, math.floor(0.2 * width)),
                ({"k": 3}, 3), ({"k": None, "ratio": 0.15, "rounding": "ceil"},
                                math.ceil(0.15 * width - 1e-9))]
    for change, k in settings:
        for name, value in change.items():
            setattr(layer, name, value)
        for _ in range(2):  # the first call fills the remembered k, the second uses it
            torch.testing.assert_close(layer(x), brute_force(x, k), rtol=0, atol=0)
    fresh = KWTA(0.5)
    fresh(x)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), brute_force(x, math.ceil(0.15 * width - 1e-9)),
                               rtol=0, atol=0)
    layer.k = width + 1
    with pytest.raises(ConfigError, match="out of range"):
        layer(x)
