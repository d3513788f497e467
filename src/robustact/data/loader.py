"""Deterministic, vectorised mini-batches from an in-memory :class:`ImageDataset`."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from robustact.data.datasets import ImageDataset
from robustact.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from ``(seed, epoch)``, the same on every platform."""
    digest = hashlib.sha256(f"robustact-batches:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def crop_flip(x: torch.Tensor, padding: int, offsets: torch.Tensor | None,
              flips: torch.Tensor | None) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip of a whole batch, in one gather.

    Args:
        x: images (B, C, H, W), any dtype.
        padding: zero padding in pixels on each side before cropping back to (H, W).
        offsets: int64 (B, 2), the crop's top-left corner (row, col) in the padded image, each in
            ``[0, 2 * padding]``; ``padding - offset`` is how far the content moves (down, right).
        flips: bool (B,), mirror the crop left-right where true.

    Returns:
        (B, C, H, W), same dtype and device as ``x``:
        ``out[b, c, h, w] = padded[b, c, h + row_b, col_b + (W - 1 - w if flip_b else w)]``.
    """
    b, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flips is not None:
        cols = torch.where(flips.view(b, 1), (w - 1) - cols, cols)
    if padding > 0 and offsets is not None:
        x = F.pad(x, (padding, padding, padding, padding))
        rows = rows + offsets[:, 0:1]
        cols = cols + offsets[:, 1:2]
    batch_idx = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chan_idx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[batch_idx, chan_idx, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class BatchLoader:
    """Iterate ``(x, y)`` mini-batches: x float32 (B, C, H, W) in [0, 1], y int64 (B,).

    All randomness (shuffle order, crop offsets, flips) is drawn on the CPU from a
    :class:`torch.Generator` seeded by ``(seed, epoch)``: the same epoch always yields the same
    batches, so training resumes bit-identically; call :meth:`set_epoch` before each epoch.
    Pixels stay uint8 until the batch is on ``device``, where it becomes ``float().div_(255)``.

    Args:
        dataset: the in-memory split.
        batch_size: samples per batch.
        shuffle: a new random order each epoch.
        augment: random crop (zero padding ``crop_padding``) and horizontal flip (if ``hflip``).
        seed: base seed of the per-epoch generator.
        device: where batches are put (default CPU).
        resize: output side length in pixels (int or (H, W)); bilinear, then clamped to [0, 1].
        drop_last: drop the last, smaller batch.
        pin_memory: pin uint8 batches before the copy (default: when ``device`` is CUDA).
        crop_padding: override ``dataset.info.crop_padding`` (pixels; 0 disables the crop).
        hflip: override ``dataset.info.hflip``.
        rank, world_size: distributed training: every process draws the same global order and
            takes every ``world_size``-th sample from position ``rank`` (the order is first
            padded by repeating its head to a multiple of ``world_size``, as
            ``DistributedSampler`` does), so the processes see disjoint shards of equal size.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int = 128, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, device: str | torch.device | None = None,
                 resize: int | tuple[int, int] | None = None, drop_last: bool = False,
                 pin_memory: bool | None = None, *, crop_padding: int | None = None,
                 hflip: bool | None = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in [0, world_size), got rank {rank} of "
                              f"{world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.resize = _size_pair(resize)
        self.drop_last = drop_last
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        self.crop_padding = dataset.info.crop_padding if crop_padding is None else int(crop_padding)
        self.hflip = dataset.info.hflip if hflip is None else bool(hflip)
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {self.crop_padding}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentations the next iteration yields."""
        self.epoch = int(epoch)

    def _shard_size(self) -> int:
        return math.ceil(len(self.dataset) / self.world_size)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def _draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """CPU order (N,), crop offsets (N, 2) or None, flips (N,) or None for ``epoch``."""
        n = len(self.dataset)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment and self.crop_padding > 0:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=gen)
        if self.augment and self.hflip:
            flips = torch.rand(n, generator=gen) < 0.5
        if self.world_size > 1:  # this process's shard of the same global draw
            positions = torch.arange(self._shard_size() * self.world_size) % n
            positions = positions[self.rank::self.world_size]
            order = order[positions]
            offsets = None if offsets is None else offsets[positions]
            flips = None if flips is None else flips[positions]
        return order, offsets, flips

    def batches(self, epoch: int | None = None, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` (default: the one set by :meth:`set_epoch`), from batch
        number ``start`` on (to resume in the middle of an epoch)."""
        order, offsets, flips = self._draw(self.epoch if epoch is None else epoch)
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self._make_batch(order[sl],
                                   None if offsets is None else offsets[sl],
                                   None if flips is None else flips[sl])

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.pin_memory and self.device.type != "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _make_batch(self, index: torch.Tensor, offsets: torch.Tensor | None,
                    flips: torch.Tensor | None) -> Batch:
        x = self._to_device(self.dataset.images.index_select(0, index))
        y = self._to_device(self.dataset.labels.index_select(0, index))
        if offsets is not None or flips is not None:
            x = crop_flip(x, self.crop_padding,
                          None if offsets is None else offsets.to(self.device),
                          None if flips is None else flips.to(self.device))
        x = x.float().div_(255)
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False,
                              antialias=False).clamp_(0.0, 1.0)
        return x, y


def _size_pair(resize: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    pair = (resize, resize) if isinstance(resize, int) else tuple(resize)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"resize must be a positive int or (H, W), got {resize!r}")
    return (int(pair[0]), int(pair[1]))
