"""A light CNN for 28x28 grayscale images (MNIST, Fashion-MNIST)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustact.models.common import act_and_normalize, check_model_args
from robustact.models.registry import MODELS


@MODELS.register("small_cnn", aliases=("smallcnn",))
class SmallCNN(nn.Module):
    """conv3x3(32)-BN-act-maxpool2 -> conv3x3(64)-BN-act-maxpool2 -> fc 128 -> act -> fc.

    Three activation sites. About 0.42M parameters at 28x28 and 10 classes, so that it trains
    on two CPU cores in about half a minute per MNIST epoch.

    Shapes: input (B, in_channels, input_size, input_size) in [0, 1]; output logits
    (B, num_classes). ``input_size`` only fixes the flatten size 64 * (input_size // 4) ** 2.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, act_layer: Any = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_size: int = 28) -> None:
        super().__init__()
        check_model_args("small_cnn", num_classes, in_channels, input_size=input_size,
                         min_input_size=4, reason="two 2x2 poolings")
        act, self.normalize = act_and_normalize(act_layer, mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            act(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            act(),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            act(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

