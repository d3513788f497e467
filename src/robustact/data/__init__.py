"""Datasets (Fashion-MNIST, MNIST, CIFAR-10, SVHN) and deterministic mini-batches.

>>> train = load_dataset("fashion_mnist", "train")          # uint8 (60000, 1, 28, 28)
>>> loader = BatchLoader(train, batch_size=128, shuffle=True, augment=True, seed=0)
>>> loader.set_epoch(3)
>>> for x, y in loader: ...                                 # x float32 in [0, 1]
"""

from __future__ import annotations

from robustact.data.catalog import DATASETS, DatasetSpec
from robustact.data.datasets import (
    ImageDataset,
    clear_cache,
    dataset_info,
    list_datasets,
    load_dataset,
    verify_dataset,
)
from robustact.data.download import RemoteFile, download_file, sha256_file
from robustact.data.info import DatasetInfo
from robustact.data.loader import BatchLoader
from robustact.data.locate import (
    ensure_fashion_mnist,
    fetch_dataset,
    find_dataset_dir,
    user_cache_dir,
)

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetInfo",
    "DatasetSpec",
    "ImageDataset",
    "RemoteFile",
    "clear_cache",
    "dataset_info",
    "ensure_fashion_mnist",
    "download_file",
    "fetch_dataset",
    "find_dataset_dir",
    "list_datasets",
    "load_dataset",
    "sha256_file",
    "user_cache_dir",
    "verify_dataset",
]
