"""In-memory image datasets: :class:`ImageDataset` and :func:`load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from robustact.data.catalog import DATASETS
from robustact.data.info import DatasetInfo
from robustact.data.locate import fetch_dataset
from robustact.errors import ConfigError, DataError

SPLITS = ("train", "test")

# Parsed (images, labels) by (dataset, split, files with their mtime and size): memory only.
_CACHE: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor]] = {}


class ImageDataset:
    """A whole split held in memory as uint8 pixels.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0..255 (shared with the loader's cache:
            treat it as read-only).
        labels: int64 tensor (N,), values ``0 .. info.num_classes - 1``.
        info: the dataset's :class:`DatasetInfo`.
        split: ``"train"`` or ``"test"``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo,
                 split: str) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be int64 ({images.shape[0]},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.info = info
        self.split = split

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(uint8 image (C, H, W), label)`` of one sample."""
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (f"ImageDataset({self.info.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])})")

    def subset(self, n_or_indices: int | Sequence[int] | torch.Tensor) -> ImageDataset:
        """A new dataset with the first ``n`` samples (all if ``n >= len``), or the given indices.

        Indices may repeat and come in any order; they must lie in ``[-len, len)``.
        """
        if isinstance(n_or_indices, int) and not isinstance(n_or_indices, bool):
            if n_or_indices < 0:
                raise ConfigError(f"subset size must be >= 0, got {n_or_indices}")
            n = min(n_or_indices, len(self))
            return ImageDataset(self.images[:n], self.labels[:n], self.info, self.split)
        index = torch.as_tensor(n_or_indices, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise ConfigError(f"subset indices must lie in [-{len(self)}, {len(self)})")
        index = index.remainder(max(len(self), 1))
        return ImageDataset(self.images.index_select(0, index), self.labels.index_select(0, index),
                            self.info, self.split)


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """Static metadata of ``name`` (aliases accepted), without touching any file."""
    return DATASETS.get(name).info


def _signature(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in paths:
        stat = path.stat()
        out.append((str(path.resolve()), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None,
                 download: bool = True) -> ImageDataset:
    """Load a split of dataset ``name`` into memory (fetching the files if needed and allowed).

    Parsed arrays are cached in memory per files, so a second call is free.

    Raises:
        UnknownNameError: unknown dataset name.
        ConfigError: ``split`` is not "train" or "test".
        DataError: files missing (and not downloadable), truncated or corrupt.
    """
    spec = DATASETS.get(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    folder = fetch_dataset(spec.name, data_dir, download)
    paths = spec.split_files(folder, split)
    if paths is None:
        raise DataError(f"{folder} lacks the {split} files of {spec.name}; expected "
                        f"{', '.join(spec.file_names())}")
    key = (spec.name, split, _signature(paths))
    if key not in _CACHE:
        images, labels = spec.read(paths)
        _check_shape(images, labels, spec.info, paths)
        _CACHE[key] = (images, labels)
    images, labels = _CACHE[key]
    return ImageDataset(images, labels, spec.info, split)


def verify_dataset(name: str, folder: Path) -> dict[str, int]:
    """Read every split of dataset ``name`` from ``folder`` (as :func:`fetch_dataset` returned
    it) through the format's structural checks, and compare its size with the official one;
    returns the images per split. Raises :class:`DataError` for a truncated or corrupt file."""
    spec = DATASETS.get(name)
    counts: dict[str, int] = {}
    for split in SPLITS:
        paths = spec.split_files(folder, split)
        if paths is None:
            raise DataError(f"{folder} lacks the {split} files of {spec.name}; expected "
                            f"{', '.join(spec.file_names())}")
        images, labels = spec.read(paths)
        _check_shape(images, labels, spec.info, paths)
        counts[split] = len(labels)
        expected = (spec.sizes or {}).get(split)
        if expected is not None and counts[split] != expected:
            raise DataError(f"{paths[0]} holds {counts[split]} {split} images, the official "
                            f"{spec.name} has {expected}: it is truncated or not the official "
                            "file; delete it and fetch it again")
    return counts


def _check_shape(images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo,
                 paths: list[Path]) -> None:
    if tuple(images.shape[1:]) != info.input_shape:
        raise DataError(f"{paths[0]} holds images of shape {tuple(images.shape[1:])}, "
                        f"expected {info.input_shape} for {info.name}; replace it")
    if labels.numel() and int(labels.max()) >= info.num_classes:
        raise DataError(f"{paths[-1]} holds labels >= {info.num_classes}; replace it")


def clear_cache() -> None:
    """Forget every parsed split held in memory."""
    _CACHE.clear()
