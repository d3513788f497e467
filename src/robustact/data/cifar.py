"""Reader for the CIFAR-10 "python version" (``cifar-10-batches-py``) and its ``.tar.gz``.

Each batch file is a pickled dict with ``b"data"``, a uint8 array (N, 3072) whose rows are one
image in channel-major (C, H, W) = (3, 32, 32) order, and ``b"labels"``, a list of N ints 0..9.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from robustact.errors import DataError

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SPLIT_BATCHES = {"train": TRAIN_BATCHES, "test": TEST_BATCHES}

# The only globals a CIFAR batch (a dict holding a numpy array) needs; anything else is refused,
# so a tampered file cannot run code when unpickled.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        mod, attr = target
        if mod.startswith("numpy._core") and not hasattr(np, "_core"):  # numpy < 2
            mod = mod.replace("numpy._core", "numpy.core")
        return getattr(importlib.import_module(mod), attr)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> ``(data uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, OSError) as exc:
        raise DataError(
            f"{path} is truncated or corrupt ({exc}); delete it and extract {ARCHIVE_NAME} again"
        ) from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch (no b'data'/b'labels'); replace it")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path} has data {data.dtype}{tuple(data.shape)}, expected uint8 (N, 3072); replace it"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path} has {data.shape[0]} images but {labels.size} labels; replace it"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} has labels outside 0..9; replace it")
    return data.reshape(-1, 3, 32, 32), labels


def batch_files(directory: Path, split: str) -> list[Path] | None:
    """The batch files of ``split`` in ``directory``, or None if one is missing."""
    paths = [directory / name for name in SPLIT_BATCHES[split]]
    return paths if all(p.is_file() for p in paths) else None


def batches_present(directory: Path) -> bool:
    """Whether ``directory`` holds all six batch files."""
    return all(batch_files(directory, split) is not None for split in SPLIT_BATCHES)


def load_cifar_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batch files.

    Returns:
        images: uint8 tensor (N, 3, 32, 32), pixel values 0..255.
        labels: int64 tensor (N,), values 0..9.
    """
    parts = [read_batch(p) for p in paths]
    images = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse tar members that could write outside the extraction folder."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts:
        raise DataError(
            f"{archive} contains an unsafe path {member.name!r}; refusing to extract it, "
            "download the official archive again"
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive} contains a link or special file {member.name!r}; refusing to extract it, "
            "download the official archive again"
        )


def _extract_all(tar: tarfile.TarFile, dest: str, members: list[tarfile.TarInfo]) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own safety filter too
        tar.extractall(dest, members=members, filter="data")
    else:  # members were already checked by _check_member
        tar.extractall(dest, members=members)


def extract_archive(archive: Path, dest: Path) -> Path:
    """Safely extract the CIFAR-10 archive into ``dest``; returns ``dest / "cifar-10-batches-py"``.

    Every member is checked before anything is written; extraction goes to a temporary folder in
    ``dest`` that is renamed into place, so an interrupted run leaves no half-extracted batches.
    """
    target = dest / BATCH_DIR
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            dest.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest, prefix=".extract-") as tmp:
                _extract_all(tar, tmp, members)
                extracted = Path(tmp) / BATCH_DIR
                if not batches_present(extracted):
                    raise DataError(
                        f"{archive} has no complete {BATCH_DIR}/ folder; "
                        "download the official archive again"
                    )
                if target.exists():
                    shutil.rmtree(target)
                os.replace(extracted, target)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{archive} is truncated or corrupt ({exc}); delete it and download it again"
        ) from exc
    return target
