"""The VGG-inspired network of the KAF thesis (conv-BN-act pairs, three blocks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustact.models.common import ActLayer, act_and_normalize, check_model_args
from robustact.models.registry import MODELS

WIDTHS = (32, 64, 128)
BLOCK_DROPOUT = (0.2, 0.3, 0.4)


def vgg_block(in_planes: int, planes: int, dropout: float, act: ActLayer) -> nn.Sequential:
    """conv3x3-BN-act, conv3x3-BN-act, maxpool2, dropout. (B, in, H, W) -> (B, planes, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 3, padding=1),
        nn.BatchNorm2d(planes),
        act(),
        nn.Conv2d(planes, planes, 3, padding=1),
        nn.BatchNorm2d(planes),
        act(),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    )


@MODELS.register("vgg_kaf", aliases=("vggkaf",))
class VGGKAF(nn.Module):
    """VGG-inspired CNN of the KAF thesis, for 32x32 inputs.

    Three blocks of two 3x3 convs (32, 64, 128 filters, padding 1), each conv followed by
    BatchNorm and then the nonlinearity; each block ends with 2x2 max-pool and dropout
    (0.2, 0.3, 0.4). Then flatten (128 * (input_size // 8) ** 2), dense 128, act, dropout
    (``dropout``, 0.5), dense num_classes. Seven activation sites.

    Shapes: input (B, in_channels, input_size, input_size) in [0, 1]; output (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_size: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        check_model_args("vgg_kaf", num_classes, in_channels, dropout=dropout,
                         input_size=input_size, min_input_size=8)  # three 2x2 poolings
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        side = input_size // 8
        blocks, planes = [], in_channels
        for width, rate in zip(WIDTHS, BLOCK_DROPOUT, strict=True):
            blocks.append(vgg_block(planes, width, rate, act))
            planes = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(WIDTHS[-1] * side * side, 128),
            act(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
