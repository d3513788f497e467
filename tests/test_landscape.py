"""Loss landscapes: the grid, the clean point, a linear model's closed form, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustact.errors import ConfigError
from robustact.eval.landscape import loss_landscape

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5))


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # inside [0.35, 0.65]: offsets |a| + |b| <= 0.3 never reach the [0, 1] clip
    return 0.35 + 0.3 * torch.rand(n, 2, 4, 4, generator=g), torch.randint(0, 5, (n,),
                                                                          generator=g)


def test_grid_shape_and_clean_point() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5))
    x, y = batch()
    model.train()
    out = loss_landscape(model, x, y, eps=0.1, steps=5, batch_size=12)  # 2 points per pass
    assert model.training  # mode restored
    assert len(out["alphas"]) == len(out["betas"]) == 5 and out["alphas"][2] == 0.0
    assert out["alphas"][0] == pytest.approx(-0.1) and out["alphas"][-1] == pytest.approx(0.1)
    assert len(out["loss"]) == 5 and all(len(row) == 5 for row in out["loss"])
    with torch.no_grad():
        model.eval()
        clean = F.cross_entropy(model(x), y).item()
    assert out["clean_loss"] == pytest.approx(clean, abs=1e-5)
    assert out["loss"][2][2] == pytest.approx(clean, abs=1e-5)
    assert out["direction"] == "gradient x random" and out["n"] == 6
    json.dumps(out, allow_nan=False)  # JSON-ready


def test_linear_model_matches_the_closed_form() -> None:
    model = linear_model()
    x, y = batch()
    eps, steps = 0.15, 5
    out = loss_landscape(model, x, y, eps=eps, steps=steps, seed=3, batch_size=64)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    flat = x.flatten(1)
    # the input gradient of CE for a linear model: W^T (softmax - onehot), per example
    p = (flat @ W.T + b).softmax(1)
    g = ((p - F.one_hot(y, 5)) @ W).sign()
    r = (torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    r = r.flatten(1).float()
    for i, a in enumerate(out["alphas"]):
        for j, c in enumerate(out["betas"]):
            logits = (flat + a * g + c * r) @ W.T + b
            assert out["loss"][i][j] == pytest.approx(F.cross_entropy(logits, y).item(),
                                                      rel=1e-5)
    # along +gradient the loss rises (convex in the input, slope ||grad||_1 > 0 at 0)
    centre = steps // 2
    along = [out["loss"][i][centre] for i in range(centre, steps)]
    assert all(u < v for u, v in zip(along, along[1:], strict=False))


def test_seeded_reproducibility_and_samples() -> None:
    model = linear_model()
    x, y = batch()
    one = loss_landscape(model, x, y, eps=0.1, steps=3, seed=5)
    assert loss_landscape(model, x, y, eps=0.1, steps=3, seed=5) == one
    other = loss_landscape(model, x, y, eps=0.1, steps=3, seed=6)
    assert other["loss"][1] != one["loss"][1]  # another random direction
    averaged = loss_landscape(model, x, y, eps=0.1, steps=3, seed=5, n_samples=3)
    assert averaged["n_samples"] == 3
    for row, expected in zip(averaged["loss"], one["loss"], strict=True):  # deterministic model
        assert row == pytest.approx(expected, rel=1e-6)


def test_invalid_arguments() -> None:
    model = linear_model()
    x, y = batch()
    with pytest.raises(ConfigError, match="odd"):
        loss_landscape(model, x, y, eps=0.1, steps=4)
    with pytest.raises(ConfigError, match="eps"):
        loss_landscape(model, x, y, eps=0.0)
    with pytest.raises(ConfigError, match="labels"):
        loss_landscape(model, x, y[:2], eps=0.1)
