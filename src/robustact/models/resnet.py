"""ResNets: CIFAR-style ResNet18 (optional ImageNet stem), PreActResNet18, ResNet20/32/56.

Every activation is a module created by the model's ``act_layer`` factory, one per site.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.errors import ConfigError
from robustact.models.common import (
    PADDINGS,
    ActLayer,
    act_and_normalize,
    check_choice,
    check_model_args,
    check_positive,
    explicit_padding,
    init_conv_bn,
    pad_input,
)
from robustact.models.registry import MODELS

STEMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "B")
SHORTCUT_INPUTS = ("preact", "input")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias, for projection shortcuts."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN, plus shortcut, then act (torchvision / SparseResNet18 order).

    ``downsample`` is the shortcut module (None = identity); its name matches torchvision's.
    Shapes: (B, in_planes, H, W) -> (B, planes, H / stride, W / stride).
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int, act: ActLayer,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act2(out + shortcut)


def projection(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN shortcut (torchvision ``downsample``; He et al.'s option B)."""
    return nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))


@MODELS.register("resnet18")
class ResNet18(nn.Module):
    """ResNet18: BasicBlocks [2, 2, 2, 2], widths 64/128/256/512, global average pool, fc.

    ``stem="cifar"`` (default): 3x3 stride-1 conv without max-pool, for 32x32 inputs (the k-WTA
    authors' SparseResNet18 with act_layer="kwta"). ``stem="imagenet"``: torchvision's 7x7/2
    conv, BN, act, 3x3/2 max-pool, for 224x224 inputs and torchvision weights. Module names
    follow torchvision (conv1, bn1, maxpool, layer1..4, fc), see :mod:`.pretrained`.
    Pooling is adaptive, so any input of at least 8x8 (cifar) / 32x32 (imagenet) works.

    Shapes: input (B, in_channels, H, W) in [0, 1]; output logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 stem: str = "cifar") -> None:
        super().__init__()
        check_model_args("resnet18", num_classes, in_channels)
        check_choice("resnet18", "stem", stem, STEMS)
        self.stem = stem
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.act = act()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(64, 64, 1, act)
        self.layer2 = self._make_layer(64, 128, 2, act)
        self.layer3 = self._make_layer(128, 256, 2, act)
        self.layer4 = self._make_layer(256, 512, 2, act)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, stride: int, act: ActLayer) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_planes != planes:
            downsample = projection(in_planes, planes, stride)
        return nn.Sequential(
            BasicBlock(in_planes, planes, stride, act, downsample),
            BasicBlock(planes, planes, 1, act),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActBlock(nn.Module):
    """Pre-activation block: BN-act-conv3x3, BN-act-conv3x3, plus shortcut (no act after add).

    As in Wong et al.'s code, a projection shortcut (1x1 conv, no BN) is applied to the
    pre-activated input (``shortcut_from="preact"``); ``"input"`` applies it to the raw input,
    as RobustBench's ``PreActBlock``. The identity shortcut always takes the raw input.
    ``padding="same"`` is DeepMind's block (RobustBench's DMPreActResNet): stride-2 3x3 convs
    padded right/bottom only, and a 3x3 projection shortcut, padded alike.
    Shapes: (B, in_planes, H, W) -> (B, planes, H / stride, W / stride).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, act: ActLayer,
                 shortcut_from: str = "preact", padding: str = "symmetric") -> None:
        super().__init__()
        same = padding == "same"
        self.shortcut_from = shortcut_from
        self.pad = explicit_padding(padding, stride)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=0 if same else 1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            project = (nn.Conv2d(in_planes, planes, 3, stride=stride, bias=False) if same
                       else conv1x1(in_planes, planes, stride))
            self.shortcut = nn.Sequential(project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(pad_input(out if self.shortcut_from == "preact" else x,
                                               self.pad))
        out = self.conv1(pad_input(out, self.pad))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


@MODELS.register("preact_resnet18", aliases=("preactresnet18",))
class PreActResNet18(nn.Module):
    """PreActResNet18 of Wong, Rice, Kolter, "Fast is better than free" (ICLR 2020).

    3x3 stem conv (64, no BN), PreActBlocks [2, 2, 2, 2] with widths 64..512, final BN-act,
    global average pool (adaptive: 4x4 on 32x32 inputs, as the original), linear.
    ``final_bn=False`` drops the final BN-act and ``shortcut_from="input"`` feeds projection
    shortcuts the raw input: RobustBench's ``PreActResNet18()`` (Wong2020Fast); the defaults
    are its ``PreActBlockV2`` with ``bn_before_fc=True`` (Rice2020Overfitting).
    ``padding="same"`` with ``shortcut_from="input"`` is DeepMind's PreActResNet-18
    (RobustBench's DMPreActResNet, Rebuffi2021Fixing_R18), see :class:`PreActBlock`.
    Shapes: input (B, in_channels, H, W) in [0, 1]; output logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 final_bn: bool = True, shortcut_from: str = "preact",
                 padding: str = "symmetric") -> None:
        super().__init__()
        check_model_args("preact_resnet18", num_classes, in_channels)
        check_choice("preact_resnet18", "shortcut_from", shortcut_from, SHORTCUT_INPUTS)
        check_choice("preact_resnet18", "padding", padding, PADDINGS)
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        self.conv1 = conv3x3(in_channels, 64)
        widths = ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))
        for index, (in_planes, planes, stride) in enumerate(widths, start=1):
            layer = nn.Sequential(
                PreActBlock(in_planes, planes, stride, act, shortcut_from, padding),
                PreActBlock(planes, planes, 1, act, shortcut_from, padding),
            )
            self.add_module(f"layer{index}", layer)
        self.bn = nn.BatchNorm2d(512) if final_bn else nn.Identity()
        self.act = act() if final_bn else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.act(self.bn(x))
        return self.linear(torch.flatten(self.avgpool(x), 1))


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride``, zero-pad the new channels.

    Parameter-free. Shapes: (B, C, H, W) -> (B, C + extra, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.front = extra_channels // 2
        self.back = extra_channels - self.front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.front}, {self.back})"


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110, ...).

    3x3 stem conv with 16 filters, BN, act; three stages of n BasicBlocks with 16/32/64
    filters (stride 2 at the start of stages 2 and 3); global average pool; fc.
    ``shortcut="A"`` (default, the paper's CIFAR setting): parameter-free zero-padding identity
    shortcuts; ``"B"``: 1x1 conv + BN projections where the shape changes. ResNet20-A has
    0.27M parameters. Shapes: input (B, in_channels, H, W) in [0, 1]; output (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 depth: int = 20, shortcut: str = "A") -> None:
        super().__init__()
        check_positive("resnet", num_classes=num_classes, in_channels=in_channels, depth=depth)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"resnet: depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        check_choice(f"resnet{depth}", "shortcut", shortcut, SHORTCUTS)
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        blocks = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = act()
        self.layer1 = self._make_stage(16, 16, 1, blocks, shortcut, act)
        self.layer2 = self._make_stage(16, 32, 2, blocks, shortcut, act)
        self.layer3 = self._make_stage(32, 64, 2, blocks, shortcut, act)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_stage(
        in_planes: int, planes: int, stride: int, blocks: int, shortcut: str, act: ActLayer
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                downsample = PadShortcut(stride, planes - in_planes)
            else:
                downsample = projection(in_planes, planes, stride)
        layers = [BasicBlock(in_planes, planes, stride, act, downsample)]
        layers += [BasicBlock(planes, planes, 1, act) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _fixed_depth(depth: int) -> Callable[..., CifarResNet]:
    """A constructor ``resnet{depth}(**kwargs)`` whose signature is CifarResNet's minus depth."""

    def build(**kwargs: Any) -> CifarResNet:
        return CifarResNet(depth=depth, **kwargs)

    params = [p for p in inspect.signature(CifarResNet).parameters.values() if p.name != "depth"]
    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params],
        return_annotation=CifarResNet,
    )
    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"He et al. CIFAR ResNet{depth}: :class:`CifarResNet` with depth={depth}."
    return build


# the registry's decorator, applied where each fixed-depth builder is defined
resnet20 = MODELS.register("resnet20")(_fixed_depth(20))
resnet32 = MODELS.register("resnet32")(_fixed_depth(32))
resnet44 = MODELS.register("resnet44")(_fixed_depth(44))
resnet56 = MODELS.register("resnet56")(_fixed_depth(56))
resnet110 = MODELS.register("resnet110")(_fixed_depth(110))
