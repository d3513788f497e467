"""Download one file with a progress bar, into a temporary file, checked by SHA-256."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from robustact.errors import DataError
from robustact.files import atomic_path, describe_os_error

CHUNK = 1 << 20
USER_AGENT = "robustact-data/0.1 (+python urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """An official dataset file: its name on disk, where to get it, its SHA-256 and size in bytes.

    ``urls`` are tried in order (the first is the official location, the others mirrors).
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str
    size: int


class NetworkError(DataError):
    """A download failed before any content could be checked (no network, HTTP error...)."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_with_progress(response: BinaryIO, out: BinaryIO, total: int | None, dest: Path,
                        progress: bool) -> str:
    """Stream ``response`` into ``out`` (the temporary file of ``dest``); returns the hex
    SHA-256 of what was written. A failed write (a full disk) is a DataError, not a network
    error."""
    digest = hashlib.sha256()
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
              disable=None if progress else True, leave=False) as bar:
        for chunk in iter(lambda: response.read(CHUNK), b""):
            try:
                out.write(chunk)
            except OSError as exc:
                raise DataError(f"could not write {dest}: {describe_os_error(exc)}") from exc
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def download_file(url: str, dest: Path, sha256: str | None = None, *, size: int | None = None,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to a temporary file beside ``dest`` that is renamed onto ``dest`` only once
    complete and, if ``sha256`` is given, matching it; ``size`` (bytes) sizes the progress bar when
    the server sends no length. ``timeout`` is in seconds per socket operation.

    Raises:
        NetworkError: the URL could not be fetched (no network, HTTP error, refused...).
        DataError: the content's SHA-256 differs from ``sha256`` (nothing is left on disk).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    # datasets are meant to be shared: 0o644, not the temporary file's 0o600
    with atomic_path(dest, mode=0o644) as tmp, tmp.open("wb") as out:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else size
                actual = _copy_with_progress(response, out, total, dest, progress)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise NetworkError(f"could not download {url} ({reason})") from exc
        if sha256 is not None and actual != sha256.lower():
            raise DataError(
                f"{dest} downloaded from {url} has SHA-256 {actual}, expected {sha256}; "
                "the file was deleted, try again later or fetch it by hand"
            )
    return dest


def download_remote(remote: RemoteFile, directory: Path, *, progress: bool = True) -> Path:
    """Download ``remote`` into ``directory``, trying its URLs in order; returns the file path.

    A checksum mismatch is raised at once; a :class:`NetworkError` only after every URL failed.
    """
    errors: list[str] = []
    for url in remote.urls:
        try:
            return download_file(url, directory / remote.filename, remote.sha256,
                                 size=remote.size, progress=progress)
        except NetworkError as exc:
            errors.append(str(exc))
    raise NetworkError("; ".join(errors))
