"""A user's own network for tests/test_external.py: defined outside robustact, fed normalized x."""

from __future__ import annotations

from torch import nn


def tiny_cnn(width: int = 8, classes: int = 10) -> nn.Module:
    """A one-layer CNN for 28x28 grey images; it is fed (x - mean) / std, not [0, 1] pixels."""
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(width * 14 * 14, classes))
