"""Static facts about each dataset: shape, classes, normalisation and augmentation defaults.

Nothing here touches the disk, so :func:`robustact.data.dataset_info` is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset.

    Attributes:
        name: registered name, e.g. ``"fashion_mnist"``.
        num_classes: number of labels; labels are ``0 .. num_classes - 1``.
        in_channels: image channels C (1 for grey, 3 for RGB).
        image_size: ``(H, W)`` in pixels.
        mean: per-channel mean of the train split, pixel values scaled to [0, 1].
        std: per-channel standard deviation of the train split, same scale.
        classes: human-readable class names, index = label.
        crop_padding: zero padding in pixels of the default random crop (0 = no crop).
        hflip: whether random horizontal flips are a valid default augmentation.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    crop_padding: int
    hflip: bool

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for "
                             f"{self.num_classes} classes")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"{self.name}: mean/std need one value per channel")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.in_channels, *self.image_size)


DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

FASHION_MNIST = DatasetInfo(
    "fashion_mnist", num_classes=10, classes=FASHION_CLASSES, in_channels=1, image_size=(28, 28),
    mean=(0.2860,), std=(0.3530,), crop_padding=2, hflip=True,
)
MNIST = DatasetInfo(
    "mnist", num_classes=10, classes=DIGITS, in_channels=1, image_size=(28, 28),
    mean=(0.1307,), std=(0.3081,), crop_padding=2, hflip=False,
)
CIFAR10 = DatasetInfo(
    "cifar10", num_classes=10, classes=CIFAR10_CLASSES, in_channels=3, image_size=(32, 32),
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_padding=4, hflip=True,
)
SVHN = DatasetInfo(
    "svhn", num_classes=10, classes=DIGITS, in_channels=3, image_size=(32, 32),
    mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), crop_padding=4,
    hflip=False,  # mirrored digits are not digits
)
