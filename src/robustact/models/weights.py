"""Published pre-trained weights: where they come from, their checksums, and the local cache.

    fetch_weights("resnet18-imagenet")      # downloads torchvision's file once, checked by SHA-256
    resolve_weights("resnet18-imagenet")    # -> the cached file (what ``pretrained:`` accepts)

The k-WTA paper fine-tunes ImageNet-pretrained ResNet18 and AlexNet; robustact loads
torchvision's published files by key mapping (:mod:`robustact.models.pretrained`) without
torchvision. ``robustact weights fetch NAME`` downloads them from their official URL into the
cache (``$ROBUSTACT_WEIGHTS``, default ``~/.cache/robustact/weights``), where ``pretrained:
NAME`` in a config finds them. A file name (``resnet18-f37072fd.pth``) is found there too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from robustact.data.download import download_file
from robustact.errors import CheckpointError, UnknownNameError


@dataclass(frozen=True)
class PublishedWeights:
    """One published weights file: its name on disk, official URL, SHA-256, size in bytes and
    the registered model it loads into."""

    filename: str
    url: str
    sha256: str
    size: int
    model: str
    summary: str


#: torchvision's ImageNet weights (IMAGENET1K_V1), as published at download.pytorch.org; the
#: file name carries the first 8 hex digits of the SHA-256
WEIGHTS = {
    "resnet18-imagenet": PublishedWeights(
        "resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", 46830571,
        "resnet18", "torchvision ResNet18, ImageNet-1k (top-1 69.8%)"),
    "alexnet-imagenet": PublishedWeights(
        "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02", 244408911,
        "alexnet", "torchvision AlexNet, ImageNet-1k (top-1 56.5%)"),
}


def weights_cache() -> Path:
    """Where fetched weights live: ``$ROBUSTACT_WEIGHTS`` or ``~/.cache/robustact/weights``."""
    given = os.environ.get("ROBUSTACT_WEIGHTS")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "robustact" / "weights"


def published(name: str) -> PublishedWeights:
    """The published weights ``name`` (see :data:`WEIGHTS`); one line when unknown."""
    if name not in WEIGHTS:
        raise UnknownNameError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)} "
                               "(robustact weights list)")
    return WEIGHTS[name]


def fetch_weights(name: str, *, directory: Path | None = None, url: str | None = None,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Download the weights ``name`` into the cache (``directory``) unless a file with the
    published checksum is already there; returns its path. ``url`` replaces the official
    location (a mirror); the published SHA-256 is checked either way, and nothing is kept
    when it differs."""
    from robustact.data.download import sha256_file

    entry = published(name)
    path = (directory or weights_cache()) / entry.filename
    if path.is_file() and sha256_file(path) == entry.sha256:
        return path
    return download_file(url or entry.url, path, entry.sha256, size=entry.size,
                         progress=progress, timeout=timeout)


def resolve_weights(value: str | os.PathLike[str]) -> Path:
    """The file a ``pretrained:`` value names: an existing path, a published name
    (``resnet18-imagenet``) or a published file name, the latter two in the cache."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    text = str(value)
    by_file = {w.filename: n for n, w in WEIGHTS.items()}
    name = text if text in WEIGHTS else by_file.get(path.name)
    if name is None:
        raise CheckpointError(f"weights file not found: {path}; give the path of a .pth file "
                              f"or a published name ({', '.join(WEIGHTS)})")
    cached = weights_cache() / WEIGHTS[name].filename
    if not cached.is_file():
        raise CheckpointError(f"weights {name} are not in the cache ({cached}); fetch them with: "
                              f"robustact weights fetch {name}")
    return cached
