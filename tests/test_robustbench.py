"""Tests of RobustBench-format loading: WideResNets and PreActResNet18 from generated state dicts.

The key lists below are written out from RobustBench's architectures (``WideResNet`` of
wide_resnet.py, ``DMWideResNet`` and ``DMPreActResNet`` of dm_wide_resnet.py, ``PreActResNet``
of resnet.py); the tensors are random, of the shapes those modules hold.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact.activations import get_act_layer
from robustact.errors import CheckpointError, ConfigError
from robustact.models import create_model, load_robustbench_state
from robustact.models.resnet import PreActBlock
from robustact.models.robustbench import CIFAR10_MEAN, CIFAR10_STD

torch.set_num_threads(2)

Shapes = dict[str, tuple[int, ...]]
# normalization stored in the files: other values than the defaults, so a test sees them load
FILE_MEAN = (0.5, 0.4, 0.3)
FILE_STD = (0.2, 0.25, 0.3)


def bn(shapes: Shapes, prefix: str, channels: int) -> None:
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{suffix}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def trades_wrn_shapes(depth: int, width: int, num_classes: int = 10,
                      sub_block1: bool = False, bias_last: bool = True) -> Shapes:
    """RobustBench ``WideResNet(depth, num_classes, widen_factor, sub_block1, bias_last)``."""
    widths = (16, 16 * width, 32 * width, 64 * width)
    shapes: Shapes = {"conv1.weight": (16, 3, 3, 3)}
    groups = [("block1", 0), ("sub_block1", 0), ("block2", 1), ("block3", 2)]
    for name, index in groups if sub_block1 else [g for g in groups if g[0] != "sub_block1"]:
        in_planes, out_planes = widths[index], widths[index + 1]
        for i in range((depth - 4) // 6):
            prefix, planes = f"{name}.layer.{i}", in_planes if i == 0 else out_planes
            bn(shapes, f"{prefix}.bn1", planes)
            shapes[f"{prefix}.conv1.weight"] = (out_planes, planes, 3, 3)
            bn(shapes, f"{prefix}.bn2", out_planes)
            shapes[f"{prefix}.conv2.weight"] = (out_planes, out_planes, 3, 3)
            if planes != out_planes:
                shapes[f"{prefix}.convShortcut.weight"] = (out_planes, planes, 1, 1)
    bn(shapes, "bn1", widths[3])
    shapes["fc.weight"] = (num_classes, widths[3])
    if bias_last:
        shapes["fc.bias"] = (num_classes,)
    return shapes


def dm_wrn_shapes(depth: int, width: int, num_classes: int = 10, buffers: bool = False) -> Shapes:
    """RobustBench ``DMWideResNet(num_classes, depth, width)``; ``buffers``: with the mean/std
    buffers its files carried before they were made non-persistent."""
    widths = (16, 16 * width, 32 * width, 64 * width)
    shapes: Shapes = {"init_conv.weight": (16, 3, 3, 3)}
    for group in range(3):
        in_planes, out_planes = widths[group], widths[group + 1]
        for i in range((depth - 4) // 6):
            prefix, planes = f"layer.{group}.block.{i}", in_planes if i == 0 else out_planes
            bn(shapes, f"{prefix}.batchnorm_0", planes)
            shapes[f"{prefix}.conv_0.weight"] = (out_planes, planes, 3, 3)
            bn(shapes, f"{prefix}.batchnorm_1", out_planes)
            shapes[f"{prefix}.conv_1.weight"] = (out_planes, out_planes, 3, 3)
            if planes != out_planes:
                shapes[f"{prefix}.shortcut.weight"] = (out_planes, planes, 1, 1)
    bn(shapes, "batchnorm", widths[3])
    shapes["logits.weight"] = (num_classes, widths[3])
    shapes["logits.bias"] = (num_classes,)
    if buffers:
        shapes["mean"] = shapes["std"] = (3, 1, 1)
    return shapes


def preact_shapes(num_classes: int = 10, bn_before_fc: bool = False) -> Shapes:
    """RobustBench ``PreActResNet(PreActBlock or PreActBlockV2, [2, 2, 2, 2], bn_before_fc)``."""
    shapes: Shapes = {"conv1.weight": (64, 3, 3, 3)}
    in_planes = 64
    for layer, planes in zip((1, 2, 3, 4), (64, 128, 256, 512), strict=True):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            bn(shapes, f"{prefix}.bn1", in_planes)
            shapes[f"{prefix}.conv1.weight"] = (planes, in_planes, 3, 3)
            bn(shapes, f"{prefix}.bn2", planes)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            if in_planes != planes:
                shapes[f"{prefix}.shortcut.0.weight"] = (planes, in_planes, 1, 1)
            in_planes = planes
    if bn_before_fc:
        bn(shapes, "bn", 512)
    shapes["linear.weight"] = (num_classes, 512)
    shapes["linear.bias"] = (num_classes,)
    return shapes


def dm_preact_shapes(num_classes: int = 10) -> Shapes:
    """RobustBench ``DMPreActResNet(num_classes, depth=18, width=0)``: 3x3 shortcuts."""
    shapes: Shapes = {"conv_2d.weight": (64, 3, 3, 3)}
    in_planes = 64
    for layer, planes in enumerate((64, 128, 256, 512)):
        for block in (0, 1):
            prefix = f"layer_{layer}.{block}"
            bn(shapes, f"{prefix}.batchnorm_0", in_planes)
            shapes[f"{prefix}.conv_2d_1.weight"] = (planes, in_planes, 3, 3)
            bn(shapes, f"{prefix}.batchnorm_1", planes)
            shapes[f"{prefix}.conv_2d_2.weight"] = (planes, planes, 3, 3)
            if in_planes != planes:
                shapes[f"{prefix}.shortcut.weight"] = (planes, in_planes, 3, 3)
            in_planes = planes
    bn(shapes, "batchnorm", 512)
    shapes["logits.weight"] = (num_classes, 512)
    shapes["logits.bias"] = (num_classes,)
    return shapes


def random_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.randint(0, 100, shape)
    if key.endswith(("running_var", "std", "sigma")):
        return torch.rand(shape) + 0.5  # positive
    if key.endswith(("running_mean", "mean", "mu", "bias")):
        return torch.randn(shape) * 0.1
    fan_in = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
    return torch.randn(shape) * (2.0 / fan_in) ** 0.5  # He scale keeps logits finite


def random_state(shapes: Shapes, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + key: random_tensor(key, shape) for key, shape in shapes.items()}


def logits(model: nn.Module) -> torch.Tensor:
    """The logits of two fixed random 32x32 images."""
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.rand(2, 3, 32, 32))


def round_trip(name: str, saved: dict, tmp_path, **kwargs) -> nn.Module:
    """Load ``saved`` from memory and from a file; both give the same (finite) logits."""
    model = load_robustbench_state(name, saved, **kwargs)
    path = tmp_path / "model.pt"
    torch.save(saved, path)
    again = load_robustbench_state(name, path, **kwargs)
    first, second = logits(model), logits(again)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    return model


def plain(model: nn.Module) -> Shapes:
    """Our state dict's keys and shapes, without the normalization buffers."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("normalize.")}


# --------------------------------------------------------------------------- key lists


def test_wrn_keys_are_robustbench_keys() -> None:
    shapes = trades_wrn_shapes(28, 10)
    assert len(shapes) == 155  # conv1, 12 blocks of 12 tensors + 3 shortcuts, bn1, fc
    assert plain(create_model("wrn28_10")) == shapes
    assert plain(create_model("wrn34_10", num_classes=100)) == trades_wrn_shapes(34, 10, 100)


def test_preact_keys_are_robustbench_keys() -> None:
    assert plain(create_model("preact_resnet18")) == preact_shapes(bn_before_fc=True)
    assert plain(create_model("preact_resnet18", final_bn=False)) == preact_shapes()


# --------------------------------------------------------------------------- WideResNets


def test_trades_wrn28_10_with_module_prefix_in_state_dict(tmp_path) -> None:
    state = random_state(trades_wrn_shapes(28, 10), prefix="module.")
    model = round_trip("wrn28_10", {"epoch": 99, "state_dict": state}, tmp_path)
    loaded = model.state_dict()
    for key in ("block2.layer.0.convShortcut.weight", "block3.layer.3.bn2.running_var", "fc.bias"):
        assert torch.equal(loaded[key], state["module." + key])
    assert model.normalize.mean.eq(0).all() and model.normalize.std.eq(1).all()
    assert not model.training


def test_trades_wrn34_10_with_sub_block1_no_fc_bias_and_model_prefix(tmp_path) -> None:
    # Carmon2019Unlabeled's form: an unused sub_block1; bias_last=False leaves fc without bias;
    # Chen2020Efficient's "model." prefix under DataParallel's "module.".
    state = random_state(trades_wrn_shapes(34, 10, sub_block1=True, bias_last=False))
    saved = {"module.model." + k: v for k, v in state.items()}
    model = round_trip("wideresnet-34-10", saved, tmp_path)
    assert torch.equal(model.fc.bias, torch.zeros(10))
    assert torch.equal(model.block1.layer[4].conv2.weight, state["block1.layer.4.conv2.weight"])


def test_dm_wrn28_10_with_mean_std_buffers(tmp_path) -> None:
    state = random_state(dm_wrn_shapes(28, 10, num_classes=100, buffers=True))
    state["mean"] = torch.tensor(FILE_MEAN).view(3, 1, 1)
    state["std"] = torch.tensor(FILE_STD).view(3, 1, 1)
    model = round_trip("wrn28_10", {"model_state_dict": state}, tmp_path)
    assert model.fc.out_features == 100  # the class count comes from the file
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(FILE_MEAN))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(FILE_STD))
    assert torch.equal(model.block2.layer[0].convShortcut.weight,
                       state["layer.1.block.0.shortcut.weight"])
    assert torch.equal(model.bn1.running_mean, state["batchnorm.running_mean"])
    assert torch.equal(model.fc.weight, state["logits.weight"])
    # DeepMind's network: Swish, and stride-2 convs padded on the right/bottom only
    assert isinstance(model.act, nn.SiLU)
    assert model.block2.layer[0].pad == (0, 1, 0, 1)
    assert model.block2.layer[0].conv1.padding == (0, 0)


def test_dm_wrn_without_buffers_gets_deepmind_cifar10_normalization() -> None:
    state = random_state(dm_wrn_shapes(10, 1))
    model = load_robustbench_state("wide_resnet", state, depth=10, widen_factor=1)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(CIFAR10_STD))
    relu = load_robustbench_state("wide_resnet", state, depth=10, widen_factor=1,
                                  act_layer="relu", mean=(0.5,), std=(0.25,))
    assert isinstance(relu.act, nn.ReLU) and relu.normalize.std.eq(0.25).all()


def test_robustbench_weights_under_another_activation() -> None:
    state = random_state(trades_wrn_shapes(10, 1))
    model = load_robustbench_state("wide_resnet", state, depth=10, widen_factor=1,
                                   act_layer="kwta", act_kwargs={"ratio": 0.2})
    kwta = type(get_act_layer("kwta")())
    assert sum(isinstance(m, kwta) for m in model.modules()) == 7
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.isfinite(logits(model)).all()


def test_same_padding_pads_a_stride_two_conv_right_and_bottom() -> None:
    # DeepMind pads a stride-2 3x3 conv by (0, 1, 0, 1): its windows start at pixel 0, where
    # symmetric padding 1 starts them at pixel -1.
    same = create_model("wide_resnet", depth=10, widen_factor=1, padding="same").eval()
    symmetric = create_model("wide_resnet", depth=10, widen_factor=1).eval()
    symmetric.load_state_dict(same.state_dict())
    block = same.block2.layer[0]
    seen: list[torch.Tensor] = []
    block.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.rand(1, 16, 8, 8)
    with torch.no_grad():
        block(x)
        unpadded = F.conv2d(block.act1(block.bn1(x)), block.conv1.weight, stride=2)
    assert seen[0].shape == (1, 32, 4, 4)
    torch.testing.assert_close(seen[0][..., :3, :3], unpadded)
    assert not torch.allclose(logits(same), logits(symmetric))


def test_preact_wong2020_form_with_mu_sigma(tmp_path) -> None:
    # Wong2020Fast: PreActBlock, no bn_before_fc, mu/sigma buffers of shape (1, 3, 1, 1).
    state = random_state(preact_shapes())
    state["mu"] = torch.tensor(FILE_MEAN).view(1, 3, 1, 1)
    state["sigma"] = torch.tensor(FILE_STD).view(1, 3, 1, 1)
    saved = {"module." + k: v for k, v in state.items()}
    model = round_trip("preact_resnet18", saved, tmp_path)
    assert isinstance(model.bn, nn.Identity) and isinstance(model.act, nn.Identity)
    assert model.layer2[0].shortcut_from == "input"
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 16  # 2 per block, none after
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(FILE_MEAN))
    assert torch.equal(model.layer4[0].shortcut[0].weight, state["layer4.0.shortcut.0.weight"])


def test_preact_rice2020_form_with_final_bn(tmp_path) -> None:
    # Rice2020Overfitting: PreActBlockV2 with bn_before_fc, saved under "last" (as Kireev's).
    state = random_state(preact_shapes(bn_before_fc=True))
    model = round_trip("PreActResNet18", {"last": {"state_dict": state}}, tmp_path)
    assert isinstance(model.bn, nn.BatchNorm2d) and model.layer2[0].shortcut_from == "preact"
    assert torch.equal(model.bn.running_var, state["bn.running_var"])


def test_shortcut_from_input_applies_the_projection_to_the_raw_input() -> None:
    block = PreActBlock(16, 32, 2, nn.ReLU, shortcut_from="input").eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        residual = block.conv2(block.act2(block.bn2(block.conv1(block.act1(block.bn1(x))))))
        torch.testing.assert_close(block(x), residual + block.shortcut(x))
        block.shortcut_from = "preact"
        torch.testing.assert_close(block(x), residual + block.shortcut(block.act1(block.bn1(x))))


def test_dm_preact_resnet18(tmp_path) -> None:
    # Rebuffi2021Fixing_R18: DeepMind's PreActResNet-18, Swish, mean/std not in the file.
    state = random_state(dm_preact_shapes())
    model = round_trip("preact_resnet18", {"module." + k: v for k, v in state.items()}, tmp_path)
    assert isinstance(model.act, nn.SiLU) and isinstance(model.bn, nn.BatchNorm2d)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.equal(model.layer3[0].shortcut[0].weight, state["layer_2.0.shortcut.weight"])
    assert torch.equal(model.layer4[1].conv2.weight, state["layer_3.1.conv_2d_2.weight"])
    assert torch.equal(model.linear.bias, state["logits.bias"])


def test_deepmind_preact_block_forward() -> None:
    # DeepMind's block: conv_2d_1 on the pre-activation padded (0, 1, 0, 1); the 3x3 shortcut on
    # the raw input, padded alike; no activation after the sum.
    block = PreActBlock(16, 32, 2, nn.SiLU, shortcut_from="input", padding="same").eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        pre = block.act1(block.bn1(x))
        res = F.conv2d(F.pad(pre, (0, 1, 0, 1)), block.conv1.weight, stride=2)
        res = block.conv2(block.act2(block.bn2(res)))
        shortcut = F.conv2d(F.pad(x, (0, 1, 0, 1)), block.shortcut[0].weight, stride=2)
        torch.testing.assert_close(block(x), res + shortcut)


def test_files_without_num_batches_tracked_load() -> None:
    state = {k: v for k, v in random_state(preact_shapes()).items()
             if not k.endswith("num_batches_tracked")}
    model = load_robustbench_state("preact_resnet18", state)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


# --------------------------------------------------------------------------- errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_wrong_key_set_is_one_line() -> None:
    state = random_state(trades_wrn_shapes(16, 1))  # WRN-16-1 into WRN-10-1: extra blocks
    with pytest.raises(CheckpointError) as exc:
        load_robustbench_state("wide_resnet", state, depth=10, widen_factor=1)
    assert "unexpected: block1.layer.1.bn1.weight" in one_line(exc)
    assert "missing: none" in one_line(exc)
    state = random_state(preact_shapes())
    with pytest.raises(CheckpointError) as exc:
        load_robustbench_state("wide_resnet", state, depth=10, widen_factor=1)
    assert "missing: block1.layer.0.bn1.weight" in one_line(exc) and "more)" in one_line(exc)


def test_wrong_shape_is_one_line() -> None:
    state = random_state(trades_wrn_shapes(10, 2))
    with pytest.raises(CheckpointError) as exc:
        load_robustbench_state("wide_resnet", state, depth=10, widen_factor=3)
    assert "block1.layer.0.bn1" not in one_line(exc)  # 16 channels in both
    assert ("e.g. block1.layer.0.conv1.weight is (32, 16, 3, 3) in the file but (48, 16, 3, 3) "
            "in the model") in one_line(exc)


def test_bad_files_and_arguments(tmp_path) -> None:
    with pytest.raises(CheckpointError) as exc:
        load_robustbench_state("wrn28_10", tmp_path / "absent.pt")
    assert "not found" in one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        load_robustbench_state("preact_resnet18", {"epoch": 3, "optimizer": {"lr": 0.1}})
    assert "holds no state dict" in one_line(exc) and "epoch" in one_line(exc)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(ConfigError("x")))
    with pytest.raises(CheckpointError) as exc:
        load_robustbench_state("preact_resnet18", evil)
    assert "refused" in one_line(exc)
    with pytest.raises(ConfigError, match="resnet20' has no RobustBench form"):
        load_robustbench_state("resnet20", {})
    state = random_state(preact_shapes())
    state["mu"] = torch.zeros(1, 3, 1, 1)
    with pytest.raises(ConfigError, match="carries its own input normalization"):
        load_robustbench_state("preact_resnet18", state, mean=(0.5,))
