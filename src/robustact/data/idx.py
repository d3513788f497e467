"""Reader for the IDX format of MNIST and Fashion-MNIST (``*-idx3-ubyte[.gz]``).

Layout (all integers big-endian): a 4-byte magic ``0x00 0x00 <type> <ndim>`` where type 0x08 means
unsigned bytes, then ``ndim`` 4-byte sizes, then the data in C order. Images have magic 0x00000803
(N, H, W), labels 0x00000801 (N,).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from robustact.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# Split -> (images stem, labels stem); the file on disk is the stem plus ".gz", or the bare stem.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_path(directory: Path, stem: str) -> Path | None:
    """The ``stem.gz`` file in ``directory``, else the uncompressed ``stem``, else None."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """The decompressed content of ``path`` (gzip if it ends in .gz)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is truncated or corrupt ({exc}); delete it and download it again"
        ) from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file into a uint8 array of the shape its header declares.

    Raises :class:`DataError` naming ``path`` on a wrong magic number or a size mismatch.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes); delete it and download it again")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind (magic 0x{magic:08x}, "
            f"expected 0x{expected_magic:08x}); replace it with the official file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated in its header; delete it and download it again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what} ({len(data)} bytes, header {tuple(dims)} needs {expected}); "
            "delete it and download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_idx_pair(
    images_path: Path, labels_path: Path, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an images/labels IDX pair.

    Returns:
        images: uint8 tensor (N, 1, H, W), pixel values 0..255.
        labels: int64 tensor (N,), values in ``0 .. num_classes - 1``.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise DataError(f"{images_path} holds a {images.ndim}-d array, expected (N, H, W)")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "both files must come from the same split"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{labels_path} has label {int(labels.max())}, expected 0..{num_classes - 1}; "
            "replace it with the official file"
        )
    return (
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def idx_split_files(directory: Path, split: str) -> list[Path] | None:
    """The ``[images, labels]`` files of ``split`` in ``directory``, or None if one is missing."""
    paths = [idx_path(directory, stem) for stem in IDX_FILES[split]]
    if any(p is None for p in paths):
        return None
    return [p for p in paths if p is not None]


def idx_present(directory: Path) -> bool:
    """Whether ``directory`` holds all four IDX files (compressed or not)."""
    return all(idx_split_files(directory, split) is not None for split in IDX_FILES)
