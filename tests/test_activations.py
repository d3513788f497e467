"""The activation registry and convert_activations on arbitrary modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustact.activations import (
    KWTA,
    convert_activations,
    count_activations,
    create_act,
    get_act_layer,
    list_activations,
)
from robustact.errors import ConfigError, UnknownNameError


class Gated(nn.Module):
    """A block with an activation, a nested Sequential and a sigmoid gate (not an activation)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.ELU()
        self.inner = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU())
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(self.act(self.fc(x)))
        return h * self.gate(h)


def test_registry_names() -> None:
    assert {"relu", "elu", "swish", "kwta"} <= set(list_activations())
    assert isinstance(create_act("swish"), nn.SiLU)
    assert isinstance(create_act("SiLU"), nn.SiLU)


def test_unknown_activation_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown activation 'rleu'; valid names: .*kwta"):
        create_act("rleu")


def test_get_act_layer_accepts_names_classes_and_callables() -> None:
    assert isinstance(get_act_layer(None)(), nn.ReLU)
    assert isinstance(get_act_layer(nn.ELU)(), nn.ELU)
    factory = get_act_layer("kwta", ratio=0.3)
    first, second = factory(), factory()
    assert first is not second and first.ratio == 0.3
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\]"):
        get_act_layer("kwta", ratio=2.0)


def test_convert_replaces_every_activation_and_keeps_gates() -> None:
    torch.manual_seed(0)
    model = Gated()
    x = torch.randn(4, 8)
    convert_activations(model, "kwta", ratio=0.5)
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(KWTA) == 3
    assert not any(k in kinds for k in (nn.ELU, nn.GELU, nn.ReLU))
    assert isinstance(model.gate, nn.Sigmoid)
    assert count_activations(model) == 3
    # each site got its own module
    assert len({id(m) for m in model.modules() if isinstance(m, KWTA)}) == 3
    # the converted model computes k-WTA at the sites: keep 4 of 8 units after fc
    h = model.act(model.fc(x))
    assert ((h != 0).sum(1) == 4).all()
    # and it converts back
    convert_activations(model, "relu")
    assert count_activations(model) == 3 and isinstance(model.act, nn.ReLU)


def test_convert_refuses_models_without_activation_modules() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    with pytest.raises(ConfigError, match="no activation modules"):
        convert_activations(Functional(), "kwta")


def test_sap_and_kaf_are_registered_activations() -> None:
    import torch

    from robustact.activations import list_activations
    from robustact.attacks.wrappers import is_randomized
    from robustact.models import create_model

    assert {"sap", "kaf", "kaf_relu", "kaf_elu", "kaf_swish", "kaf_free"} <= set(
        list_activations())
    torch.manual_seed(0)
    model = create_model("small_cnn", act_layer="sap", act_kwargs={"frac": 1.0})
    assert is_randomized(model, torch.rand(4, 1, 28, 28))
