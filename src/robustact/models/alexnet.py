"""AlexNet: the torchvision ImageNet layout, and a CIFAR-sized variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustact.models.common import ActLayer, act_and_normalize, check_model_args
from robustact.models.registry import MODELS


def alexnet_features(first_conv: nn.Conv2d, act: ActLayer) -> nn.Sequential:
    """AlexNet's five conv layers (64-192-384-256-256, act after each, max-pools after the 1st,
    2nd and 5th), in torchvision's index layout (features.0/3/6/8/10); only the first conv
    differs between the ImageNet and the CIFAR variant."""
    return nn.Sequential(
        first_conv,
        act(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        act(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        act(),
        nn.Conv2d(384, 256, 3, padding=1),
        act(),
        nn.Conv2d(256, 256, 3, padding=1),
        act(),
        nn.MaxPool2d(3, 2),
    )


def alexnet_classifier(in_features: int, hidden: tuple[int, int], num_classes: int,
                       dropout: float, act: ActLayer) -> list[nn.Module]:
    """AlexNet's dense layers: Dropout, Linear, act, Dropout, Linear, act, Linear (torchvision's
    index layout, linears at 1, 4, 6); only the widths differ between the two variants."""
    return [
        nn.Dropout(dropout),
        nn.Linear(in_features, hidden[0]),
        act(),
        nn.Dropout(dropout),
        nn.Linear(hidden[0], hidden[1]),
        act(),
        nn.Linear(hidden[1], num_classes),
    ]


@MODELS.register("alexnet")
class AlexNet(nn.Module):
    """AlexNet with torchvision's layout and module names (loads torchvision weights).

    ``features``: conv11x11/4 p2 (64), act, maxpool3/2, conv5x5 p2 (192), act, maxpool3/2,
    conv3x3 (384), act, conv3x3 (256), act, conv3x3 (256), act, maxpool3/2 (indices 0-12, the
    convolutions at 0, 3, 6, 8, 10); ``avgpool``: adaptive to 6x6; ``classifier``: Dropout,
    Linear 9216->4096, act, Dropout, Linear 4096->4096, act, Linear 4096->num_classes
    (linears at 1, 4, 6). Seven activation sites.

    Shapes: input (B, in_channels, H, W) in [0, 1], H = W = 224 as on ImageNet (anything from
    63x63 runs thanks to the adaptive pool); output logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 dropout: float = 0.5) -> None:
        super().__init__()
        check_model_args("alexnet", num_classes, in_channels, dropout=dropout)
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        self.features = alexnet_features(nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), act)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        dense = alexnet_classifier(256 * 6 * 6, (4096, 4096), num_classes, dropout, act)
        self.classifier = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(self.normalize(x)))
        return self.classifier(torch.flatten(x, 1))


def _pooled(size: int) -> int:
    """Side length after MaxPool2d(3, stride=2) without padding."""
    return (size - 3) // 2 + 1


@MODELS.register("alexnet_cifar")
class AlexNetCifar(nn.Module):
    """AlexNet scaled to 32x32 inputs (the five-conv AlexNet with 5x5/3x3 kernels, stride 1).

    ``features``: conv5x5 p2 (64), act, maxpool3/2, conv5x5 p2 (192), act, maxpool3/2,
    conv3x3 p1 (384), act, conv3x3 p1 (256), act, conv3x3 p1 (256), act, maxpool3/2
    (32 -> 15 -> 7 -> 3); ``classifier``: flatten 256*3*3, Dropout, Linear 2304->384, act,
    Dropout, Linear 384->192, act, Linear 192->num_classes (the 384/192 dense layers of the
    cuda-convnet / TensorFlow CIFAR-10 model). No BatchNorm, as the original. Seven
    activation sites. ``input_size`` fixes the flatten size (28 works too: 28 -> 13 -> 6 -> 2).

    Shapes: input (B, in_channels, input_size, input_size) in [0, 1]; output (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_size: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        check_model_args("alexnet_cifar", num_classes, in_channels, dropout=dropout,
                         input_size=input_size, min_input_size=15)  # 15 -> 7 -> 3 -> 1
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        side = _pooled(_pooled(_pooled(input_size)))
        self.features = alexnet_features(nn.Conv2d(in_channels, 64, 5, padding=2), act)
        dense = alexnet_classifier(256 * side * side, (384, 192), num_classes, dropout, act)
        self.classifier = nn.Sequential(nn.Flatten(), *dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
