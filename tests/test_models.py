"""Tests of the model zoo: shapes, gradients, activation sites, normalization, weight loading."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact.activations import ACTIVATIONS, convert_activations, get_act_layer
from robustact.errors import CheckpointError, ConfigError, UnknownNameError
from robustact.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    Normalize,
    create_model,
    list_models,
    load_torchvision_weights,
)

torch.set_num_threads(2)

ACTS = ACTIVATIONS.names()  # relu, elu, swish, kwta, the KAFs, sap
# Input (C, H, W) per model; AlexNet needs >= 63x63 (64 is the smallest convenient size).
INPUT_SHAPES = {"small_cnn": (1, 28, 28), "alexnet": (3, 64, 64)}
# The full-size WideResNets (36M and 46M parameters) are too slow for every activation on CPU;
# the generic wide_resnet runs as WRN-10-1 (test_robustbench.py loads the full-size ones).
HEAVY = {"wrn28_10", "wrn34_10"}
SMALL_KWARGS = {"wide_resnet": {"depth": 10, "widen_factor": 1}}
# Extra configurations run through the same checks as the registry defaults.
VARIANTS = [
    ("resnet18", {"stem": "imagenet"}, (3, 64, 64)),
    ("resnet20", {"shortcut": "B"}, (3, 32, 32)),
    ("wide_resnet", {"depth": 10, "widen_factor": 1, "padding": "same"}, (3, 32, 32)),
]
CASES = [
    (name, SMALL_KWARGS.get(name, {}), INPUT_SHAPES.get(name, (3, 32, 32)))
    for name in list_models() if name not in HEAVY
] + VARIANTS
CASE_IDS = [name + "".join(f"-{v}" for v in kw.values()) for name, kw, _ in CASES]
# Activation sites per model (stem/blocks/classifier), counted from the architectures.
SITES = {
    "small_cnn": 3, "resnet18": 17, "preact_resnet18": 17, "resnet20": 19, "resnet32": 31,
    "resnet44": 43, "resnet56": 55, "resnet110": 109, "alexnet": 7, "alexnet_cifar": 7,
    "vgg_kaf": 7, "wide_resnet": 7,  # WRN-d: d - 4 in the blocks, one before the pool
}


# The KAF variants and SAP are slow on CPU; they run on one network of each family, the
# activations of the seed papers on every network.
LIGHT = {"small_cnn", "resnet20", "resnet18", "alexnet_cifar", "vgg_kaf"}
ACT_CASES = [
    pytest.param(name, kwargs, shape, act, id=f"{case_id}-{act}")
    for (name, kwargs, shape), case_id in zip(CASES, CASE_IDS, strict=True)
    for act in ACTS
    if act in ("relu", "elu", "swish", "kwta") or (name in LIGHT and not kwargs)
]


def all_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every module registration, duplicates included (``model.modules()`` hides them)."""
    return (m for _, m in model.named_modules(remove_duplicate=False))


def act_type(act: str) -> type[nn.Module]:
    return type(get_act_layer(act)())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize(("name", "kwargs", "shape", "act"), ACT_CASES)
def test_forward_backward_every_model_and_activation(name, kwargs, shape, act) -> None:
    model = create_model(name, act_layer=act, **kwargs).train()
    x = torch.rand(2, *shape)  # random noise keeps k-WTA's winners varied
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}/{act}: {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}/{act}: {pname} has a non-finite grad"


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES, ids=CASE_IDS)
def test_each_activation_site_has_its_own_module(name, kwargs, shape, act) -> None:
    model = create_model(name, act_layer=act, **kwargs)
    registrations = list(all_modules(model))
    assert len({id(m) for m in registrations}) == len(registrations), "a module is reused"
    sites = [m for m in registrations if isinstance(m, act_type(act))]
    assert len(sites) == SITES[name]
    assert not any(getattr(m, "inplace", False) for m in registrations)


def test_kwta_keeps_a_fifth_of_each_sample() -> None:
    if "kwta" not in ACTIVATIONS:
        pytest.skip("k-WTA is not registered yet")
    model = create_model("small_cnn", act_layer="kwta").eval()
    first_act = model.features[2]
    seen: list[torch.Tensor] = []
    first_act.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model(torch.rand(2, 1, 28, 28))
    nonzero = (seen[0].flatten(1) != 0).sum(1)
    units = 32 * 28 * 28
    assert ((nonzero >= int(0.2 * units) - 1) & (nonzero <= int(0.2 * units) + 1)).all()


def test_act_kwargs_reach_every_site() -> None:
    model = create_model("resnet20", act_layer="elu", act_kwargs={"alpha": 0.25})
    elus = [m for m in model.modules() if isinstance(m, nn.ELU)]
    assert len(elus) == SITES["resnet20"]
    assert all(m.alpha == 0.25 for m in elus)
    if "kwta" in ACTIVATIONS:
        model = create_model("resnet18", act_layer="kwta", act_kwargs={"ratio": 0.1})
        kwtas = [m for m in model.modules() if isinstance(m, act_type("kwta"))]
        assert len(kwtas) == SITES["resnet18"] and all(m.ratio == 0.1 for m in kwtas)


def test_activation_factory_and_module_class_are_accepted() -> None:
    model = create_model("small_cnn", act_layer=nn.Tanh)
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3


def test_convert_activations_swaps_every_site() -> None:
    model = convert_activations(create_model("vgg_kaf"), "elu")
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.ELU) for m in model.modules()) == SITES["vgg_kaf"]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("name", sorted(set(list_models()) - HEAVY))
def test_grayscale_seven_classes(name) -> None:
    size = 64 if name == "alexnet" else 28  # resnets and friends also run on 28x28 MNIST
    kwargs = {"input_size": 28} if name in ("alexnet_cifar", "vgg_kaf") else {}
    kwargs.update(SMALL_KWARGS.get(name, {}))
    model = create_model(name, in_channels=1, num_classes=7, **kwargs).eval()
    assert model.normalize.mean.shape == (1, 1, 1, 1)
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, 7)


def test_resnet18_imagenet_stem_on_224() -> None:
    model = create_model("resnet18", stem="imagenet", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 224, 224)).shape == (2, 5)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_has_027m_parameters() -> None:
    # He et al. 2016, Table 6: ResNet20 has 0.27M parameters (option A, 10 classes).
    assert abs(num_params(create_model("resnet20")) - 270_000) / 270_000 < 0.02
    assert abs(num_params(create_model("resnet56")) - 850_000) / 850_000 < 0.02


def test_parameter_counts() -> None:
    # torchvision's resnet18 has 11,689,512 parameters with 1000 classes; alexnet 61,100,840.
    assert num_params(create_model("resnet18", stem="imagenet", num_classes=1000)) == 11_689_512
    assert num_params(create_model("alexnet", num_classes=1000)) == 61_100_840
    assert num_params(create_model("resnet18")) == 11_173_962  # the usual CIFAR ResNet18
    assert num_params(create_model("small_cnn")) < 500_000
    # Zagoruyko & Komodakis: WRN-28-10 has 36.5M parameters, WRN-34-10 46.2M (10 classes).
    assert num_params(create_model("wrn28_10")) == 36_479_194
    assert num_params(create_model("wrn34_10")) == 46_160_474


def test_resnet20_shortcut_a_is_parameter_free() -> None:
    model = create_model("resnet20")
    assert model.layer2[0].downsample is not None
    assert num_params(model.layer2[0].downsample) == 0
    assert num_params(create_model("resnet20", shortcut="B")) > num_params(model)


# --------------------------------------------------------------------------- normalization


def test_normalize_defaults_and_shape() -> None:
    norm = Normalize(num_channels=3)
    assert torch.equal(norm.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(norm.std.flatten(), torch.full((3,), 0.5))
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(norm(x), x * 2 - 1)
    with pytest.raises(ConfigError, match="3 input channels"):
        Normalize((0.1, 0.2), None, num_channels=3)
    with pytest.raises(ConfigError, match="std"):
        Normalize(None, (0.1, 0.0, 0.2))


@pytest.mark.parametrize(
    ("name", "shape"), [("small_cnn", (1, 28, 28)), ("resnet20", (3, 32, 32)),
                        ("vgg_kaf", (3, 32, 32)), ("alexnet_cifar", (3, 32, 32))]
)
def test_normalization_is_inside_the_model(name, shape) -> None:
    channels = shape[0]
    mean = torch.tensor([0.1, 0.2, 0.3][:channels])
    std = torch.tensor([0.2, 0.3, 0.4][:channels])
    model = create_model(name, mean=mean.tolist(), std=std.tolist()).eval()
    assert isinstance(next(iter(model.children())), Normalize)
    bare = copy.deepcopy(model)
    bare.normalize.mean.zero_()
    bare.normalize.std.fill_(1.0)
    x = torch.rand(2, *shape)
    normalized = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), bare(normalized))


# --------------------------------------------------------------------------- registry


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet1000'.*resnet18.*vgg_kaf"):
        create_model("resnet1000")


def test_bad_argument_names_model_and_argument() -> None:
    with pytest.raises(ConfigError, match=r"'resnet20'.*'depth'"):
        create_model("resnet20", depth=56)
    with pytest.raises(ConfigError, match=r"resnet18.*stem"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("small_cnn", num_classes=0)
    with pytest.raises(ConfigError, match=r"wide_resnet: depth must be 6n\+4.*got 20"):
        create_model("wide_resnet", depth=20)
    with pytest.raises(ConfigError, match=r"wide_resnet: padding must be one of"):
        create_model("wide_resnet", depth=10, padding="valid")
    with pytest.raises(ConfigError, match=r"'wrn28_10' has no argument 'depth'"):
        create_model("wrn28_10", depth=16)
    with pytest.raises(ConfigError, match=r"preact_resnet18: shortcut_from must be one of"):
        create_model("preact_resnet18", shortcut_from="out")
    with pytest.raises(ConfigError, match=r"preact_resnet18: padding must be one of"):
        create_model("preact_resnet18", padding="valid")


def test_none_arguments_keep_defaults() -> None:
    model = create_model("resnet20", num_classes=None, act_layer=None, mean=None)
    assert model.fc.out_features == 10
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == SITES["resnet20"]


def test_registry_contents() -> None:
    for name in ("small_cnn", "resnet18", "preact_resnet18", "resnet20", "resnet32",
                 "resnet56", "alexnet", "alexnet_cifar", "vgg_kaf", "wide_resnet", "wrn28_10",
                 "wrn34_10", "WideResNet-28-10", "wideresnet-34-10"):
        assert name in MODELS
    assert MODELS.resolve("wideresnet-34-10") == "wrn34_10"
    assert create_model("Small-CNN").__class__.__name__ == "SmallCNN"


# --------------------------------------------------------------------------- torchvision weights


def torchvision_resnet18_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The key names and shapes of torchvision's ``resnet18().state_dict()`` (written out)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, channels: int) -> None:
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{suffix}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    in_planes = 64
    for layer, planes in zip((1, 2, 3, 4), (64, 128, 256, 512), strict=True):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (planes, in_planes, 3, 3)
            bn(f"{prefix}.bn1", planes)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{prefix}.bn2", planes)
            if block == 0 and layer > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (planes, in_planes, 1, 1)
                bn(f"{prefix}.downsample.1", planes)
            in_planes = planes
    shapes["fc.weight"] = (num_classes, 512)
    shapes["fc.bias"] = (num_classes,)
    return shapes


TORCHVISION_ALEXNET_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def random_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.randint(0, 100, shape)
    if key.endswith("running_var"):
        return torch.rand(shape) + 0.5  # a variance is positive
    return torch.randn(shape)


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: random_tensor(key, shape) for key, shape in shapes.items()}


def test_torchvision_resnet18_key_list_is_complete() -> None:
    shapes = torchvision_resnet18_shapes()
    assert len(shapes) == 122  # torchvision resnet18: 62 parameters + 60 BN buffers
    ours = create_model("resnet18", stem="imagenet", num_classes=1000).state_dict()
    ours = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("normalize.")}
    assert ours == shapes


def test_load_torchvision_resnet18(tmp_path) -> None:
    state = random_state(torchvision_resnet18_shapes())
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = create_model("resnet18", stem="imagenet", num_classes=10)
    head_before = model.fc.weight.detach().clone()
    report = load_torchvision_weights(model, path)
    assert sorted(report["skipped"]) == ["fc.bias", "fc.weight"]
    assert report["missing"] == []
    assert len(report["loaded"]) == 120
    own = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], tensor), key
    assert model.fc.weight.shape == (10, 512)
    assert torch.equal(model.fc.weight, head_before)  # fresh head untouched

    same_head = create_model("resnet18", stem="imagenet", num_classes=1000)
    report = load_torchvision_weights(same_head, state)
    assert report["skipped"] == [] and torch.equal(same_head.fc.weight, state["fc.weight"])


def test_load_torchvision_resnet18_errors(tmp_path) -> None:
    state = random_state(torchvision_resnet18_shapes())
    state["layer2.0.conv1.weight"] = torch.randn(128, 64, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = create_model("resnet18", stem="imagenet")
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv1\.weight.*\(128, 64, 5, 5\).*"
                                              r"\(128, 64, 3, 3\)"):
        load_torchvision_weights(model, path)
    good = random_state(torchvision_resnet18_shapes())
    del good["layer3.1.bn2.running_var"]
    with pytest.raises(CheckpointError, match="layer3.1.bn2.running_var"):
        load_torchvision_weights(model, good)
    report = load_torchvision_weights(model, good, strict_backbone=False)
    assert report["missing"] == ["layer3.1.bn2.running_var"]
    with pytest.raises(CheckpointError, match="not found"):
        load_torchvision_weights(model, tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="stem='imagenet'"):
        load_torchvision_weights(create_model("resnet18"), good)
    with pytest.raises(ConfigError, match="resnet18.*alexnet"):
        load_torchvision_weights(create_model("resnet20"), good)


def test_old_torchvision_files_without_num_batches_tracked() -> None:
    state = {k: v for k, v in random_state(torchvision_resnet18_shapes()).items()
             if not k.endswith("num_batches_tracked")}
    report = load_torchvision_weights(create_model("resnet18", stem="imagenet"), state)
    assert len(report["missing"]) == 20
    assert all(k.endswith("num_batches_tracked") for k in report["missing"])


def test_load_torchvision_alexnet(tmp_path) -> None:
    state = random_state(TORCHVISION_ALEXNET_SHAPES)
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    model = create_model("alexnet", num_classes=10)
    report = load_torchvision_weights(model, path)
    assert sorted(report["skipped"]) == ["classifier.6.bias", "classifier.6.weight"]
    assert report["missing"] == [] and len(report["loaded"]) == 14
    own = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith("classifier.6."):
            assert torch.equal(own[key], tensor), key
    assert model.classifier[6].weight.shape == (10, 4096)
    state["features.3.weight"] = torch.randn(192, 64, 3, 3)
    with pytest.raises(CheckpointError, match=r"features\.3\.weight"):
        load_torchvision_weights(model, state)


def test_create_model_pretrained_uses_imagenet_normalization(tmp_path) -> None:
    state = random_state(torchvision_resnet18_shapes())
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = create_model("resnet18", stem="imagenet", pretrained=path, num_classes=10)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert sorted(model.pretrained_report["skipped"]) == ["fc.bias", "fc.weight"]
    given = create_model("resnet18", stem="imagenet", pretrained=path, mean=(0.5, 0.5, 0.5))
    assert torch.equal(given.normalize.mean.flatten(), torch.full((3,), 0.5))
    with pytest.raises(ConfigError, match="stem='imagenet'"):
        create_model("resnet18", pretrained=path)
    with pytest.raises(ConfigError, match="no torchvision weights"):
        create_model("resnet20", pretrained=path)


def test_load_torchvision_weights_into_a_kwta_model() -> None:
    if "kwta" not in ACTIVATIONS:
        pytest.skip("k-WTA is not registered yet")
    model = create_model("resnet18", stem="imagenet", act_layer="kwta")
    report = load_torchvision_weights(model, random_state(torchvision_resnet18_shapes()))
    assert report["missing"] == [] and len(report["loaded"]) == 120
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 3, 64, 64))).all()
