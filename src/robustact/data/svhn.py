"""Reader for SVHN cropped digits (``train_32x32.mat`` / ``test_32x32.mat``, MATLAB v5).

``X`` is uint8 (32, 32, 3, N) = (H, W, C, N); ``y`` is (N, 1) with labels 1..10 where 10 is the
digit 0.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import scipy.io
import torch
from scipy.io.matlab import MatReadError

from robustact.errors import DataError

SPLIT_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, LookupError, NotImplementedError,
                MatReadError, zlib.error)


def svhn_split_files(directory: Path, split: str) -> list[Path] | None:
    """``[path]`` of the .mat file of ``split`` in ``directory``, or None if it is missing."""
    path = directory / SPLIT_FILES[split]
    return [path] if path.is_file() else None


def svhn_present(directory: Path) -> bool:
    """Whether ``directory`` holds both .mat files."""
    return all(svhn_split_files(directory, split) is not None for split in SPLIT_FILES)


def load_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one SVHN .mat file.

    Returns:
        images: uint8 tensor (N, 3, 32, 32), pixel values 0..255.
        labels: int64 tensor (N,), digits 0..9 (the file's label 10 becomes 0).
    """
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except _READ_ERRORS as exc:
        raise DataError(
            f"{path} is truncated or corrupt ({exc or type(exc).__name__}); "
            "delete it and download it again"
        ) from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} has no 'X' and 'y' variables; replace it with the official file")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{path} has X {x.dtype}{tuple(x.shape)}, expected uint8 (32, 32, 3, N); replace it"
        )
    if y.shape != (x.shape[3],):
        raise DataError(f"{path} has {x.shape[3]} images but {y.size} labels; replace it")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"{path} has labels outside 1..10; replace it with the official file")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(labels)
