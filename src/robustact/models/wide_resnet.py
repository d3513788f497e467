"""WideResNets (Zagoruyko & Komodakis 2016) with RobustBench's module names: wrn28_10, wrn34_10.

The module names are those of the TRADES / RobustBench ``WideResNet`` (conv1, block1..3 each
holding ``layer.<i>`` blocks with bn1, conv1, bn2, conv2 and ``convShortcut``; bn1; fc), so
a RobustBench checkpoint loads by name (see :mod:`.robustbench`). Every activation is a module
built by the model's ``act_layer`` factory, one per site, so k-WTA or a KAF can replace ReLU.
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
    check_rate,
    explicit_padding,
    init_conv_bn,
    pad_input,
)
from robustact.models.registry import MODELS


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-act, conv3x3 (stride), BN-act, dropout, conv3x3, plus shortcut.

    Where the width changes, the shortcut is a 1x1 conv (``convShortcut``) applied to the
    pre-activated input; otherwise it is the raw input (as TRADES / RobustBench).
    Shapes: (B, in_planes, H, W) -> (B, out_planes, H / stride, W / stride).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, act: ActLayer,
                 dropout: float = 0.0, padding: str = "symmetric") -> None:
        super().__init__()
        same = padding == "same"
        self.pad = explicit_padding(padding, stride)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0 if same else 1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.act2 = act()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = self.conv1(pad_input(pre, self.pad))
        out = self.act2(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideGroup(nn.Module):
    """``blocks`` WideBlocks in ``self.layer``; the first one changes width and stride."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int,
                 act: ActLayer, dropout: float, padding: str) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                      act, dropout, padding)
            for i in range(blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@MODELS.register("wide_resnet", aliases=("wideresnet", "wrn"))
class WideResNet(nn.Module):
    """WideResNet-depth-widen_factor: a 3x3 stem conv (16), three groups of (depth - 4) / 6
    wide blocks with widths 16k, 32k, 64k (stride 1, 2, 2), final BN-act, global average pool, fc.

    WRN-28-10 has 36.5M parameters, WRN-34-10 46.2M. ``padding="same"`` reproduces DeepMind's
    WideResNet (RobustBench's DMWideResNet), whose stride-2 convs pad right/bottom only.
    Pooling is adaptive (8x8 on 32x32 inputs, as the original).
    Shapes: input (B, in_channels, H, W) in [0, 1]; output logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 depth: int = 28, widen_factor: int = 10, dropout: float = 0.0,
                 padding: str = "symmetric") -> None:
        super().__init__()
        check_model_args("wide_resnet", num_classes, in_channels)
        check_positive("wide_resnet", depth=depth, widen_factor=widen_factor)
        check_rate("wide_resnet", dropout=dropout)
        check_choice("wide_resnet", "padding", padding, PADDINGS)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"wide_resnet: depth must be 6n+4 (10, 16, 28, 34, 70), got {depth}")
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        for index, stride in enumerate((1, 2, 2), start=1):
            group = WideGroup(blocks, widths[index - 1], widths[index], stride, act, dropout,
                              padding)
            self.add_module(f"block{index}", group)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.act = act()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        x = self.block3(self.block2(self.block1(x)))
        x = self.act(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _fixed_size(depth: int, widen_factor: int) -> Callable[..., WideResNet]:
    """A constructor ``wrn{depth}_{widen_factor}(**kwargs)`` whose signature is WideResNet's
    minus depth and widen_factor."""
    name = f"wrn{depth}_{widen_factor}"

    def build(**kwargs: Any) -> WideResNet:
        return WideResNet(depth=depth, widen_factor=widen_factor, **kwargs)

    params = [p for p in inspect.signature(WideResNet).parameters.values()
              if p.name not in ("depth", "widen_factor")]
    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params],
        return_annotation=WideResNet,
    )
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"WideResNet-{depth}-{widen_factor}: :class:`WideResNet` with "
                     f"depth={depth}, widen_factor={widen_factor}.")
    return build


# the registry's decorator, applied where each fixed-size builder is defined
wrn28_10 = MODELS.register("wrn28_10", aliases=("wideresnet-28-10", "wrn-28-10"))(
    _fixed_size(28, 10))
wrn34_10 = MODELS.register("wrn34_10", aliases=("wideresnet-34-10", "wrn-34-10"))(
    _fixed_size(34, 10))
