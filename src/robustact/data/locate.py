"""Finding a dataset on disk, and fetching it (Debian package or download) when it is missing.

Search order: the ``data_dir`` argument (alone: when it is given, nothing else is searched, and
it must exist), else ``$ROBUSTACT_DATA``, system folders (Debian's
``dataset-fashion-mnist`` puts Fashion-MNIST in ``/usr/share/datasets/fashion-mnist/``), then the
user cache ``$XDG_CACHE_HOME/robustact`` (default ``~/.cache/robustact``). Inside a root, the files
may lie in a per-dataset folder (``fashion_mnist/``, ``FashionMNIST/raw/`` as torchvision leaves
it, ``cifar-10-batches-py/``, ``svhn/``...), or directly in an explicit ``data_dir``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from robustact.data.catalog import DATASETS, DatasetSpec
from robustact.data.download import NetworkError, download_remote
from robustact.errors import DataError

log = logging.getLogger(__name__)

ENV_VAR = "ROBUSTACT_DATA"

# Read-only folders where a system package puts a dataset's files directly.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
# Debian packages that provide a dataset into SYSTEM_DIRS.
APT_PACKAGES: dict[str, str] = {"fashion_mnist": "dataset-fashion-mnist"}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/robustact``, or ``~/.cache/robustact``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "robustact"


def _env_root() -> Path | None:
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else None


def _candidates(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Every folder to test for ``spec``'s files, in search order: inside ``data_dir`` alone
    when it is given (never a silent fall-back to another copy)."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root / sub for sub in spec.subdirs] + [root]
    folders: list[Path] = []
    env = _env_root()
    if env is not None:
        folders += [env / sub for sub in spec.subdirs]
    folders += list(SYSTEM_DIRS.get(spec.name, ()))
    cache = user_cache_dir()
    folders += [cache / sub for sub in spec.subdirs]
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def find_dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder holding all files of dataset ``name``, or None; reads and writes nothing.

    For CIFAR-10 a folder holding only ``cifar-10-python.tar.gz`` counts (it is extracted on load).
    Raises :class:`~robustact.errors.UnknownNameError` for an unknown name.
    """
    spec = DATASETS.get(name)
    for folder in _candidates(spec, data_dir):
        try:
            if folder.is_dir() and spec.present(folder):
                return folder
        except OSError:  # unreadable folder: skip it
            continue
    return None


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def download_root(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """``data_dir`` if given and writable, else the first writable of ``$ROBUSTACT_DATA`` and
    the user cache; None when there is none."""
    if data_dir is not None:  # an explicit folder, or nothing
        root = Path(data_dir).expanduser()
        return root if _writable(root) else None
    env = _env_root()
    roots = ([env] if env is not None else []) + [user_cache_dir()]
    return next((root for root in roots if _writable(root)), None)


def _run_quietly(cmd: list[str]) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=900, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def apt_install(package: str) -> bool:
    """``apt-get install -y package`` (after ``apt-get update`` if the first try fails).

    Only when running as root with apt-get on the PATH; returns whether it succeeded.
    """
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None or geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    log.info("installing the Debian package %s with apt-get", package)
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    return _run_quietly(install) or (_run_quietly(["apt-get", "update"]) and _run_quietly(install))


def _search_roots(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = _env_root()
    roots = ([env] if env is not None else []) + list(SYSTEM_DIRS.get(spec.name, ()))
    return roots + [user_cache_dir()]


def _default_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """Where files would be downloaded to, without creating any folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return _env_root() or user_cache_dir()


def _manual_hint(spec: DatasetSpec, root: Path) -> str:
    """One sentence: which files to fetch from where by hand, and where to put them."""
    urls = ", ".join(remote.urls[0] for remote in spec.remote_files)
    return (f"download {', '.join(spec.file_names())} by hand from {urls} (see {spec.homepage}) "
            f"and put them in {root / spec.name}, or point data_dir or ${ENV_VAR} at a folder "
            "holding them")


def _download(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None,
              progress: bool) -> Path:
    root = download_root(data_dir)
    if root is None:
        where = f"{data_dir} is not writable" if data_dir is not None else \
            "no writable data folder was found"
        raise DataError(f"{spec.name} is missing and {where}; give a writable --data-dir or "
                        f"set {ENV_VAR} to a writable folder")
    folder = root / spec.name
    try:
        for remote in spec.remote_files:
            if not (folder / remote.filename).is_file():
                download_remote(remote, folder, progress=progress)
    except NetworkError as exc:
        raise DataError(f"{spec.name}: {exc}; {_manual_hint(spec, root)}") from exc
    if not spec.present(folder):
        raise DataError(f"{spec.name}: the downloaded files in {folder} are incomplete; "
                        f"{_manual_hint(spec, root)}")
    return folder


def fetch_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                  download: bool = True, *, progress: bool = True) -> Path:
    """The folder to read dataset ``name`` from, fetching the files first if they are missing.

    When missing and ``download`` is true: Fashion-MNIST is first installed from Debian's
    ``dataset-fashion-mnist`` when running as root with apt-get; otherwise the official files are
    downloaded (SHA-256 checked) into ``<root>/<name>/``, root being the first writable of
    ``data_dir``, ``$ROBUSTACT_DATA`` and the user cache. A CIFAR-10 archive is extracted.

    Raises:
        UnknownNameError: unknown dataset name.
        DataError: missing with ``download=False``, no network, or a checksum mismatch; the
            message says which files to put where.
    """
    spec = DATASETS.get(name)
    _check_data_dir(data_dir)
    folder = find_dataset_dir(spec.name, data_dir)
    apt_package = None if data_dir is not None else APT_PACKAGES.get(spec.name)
    if folder is None and download and apt_package and apt_install(apt_package):
        folder = find_dataset_dir(spec.name, data_dir)
    if folder is None:
        if not download:
            searched = ", ".join(str(p) for p in _search_roots(spec, data_dir))
            raise DataError(
                f"dataset {spec.name} not found (searched {searched}); call with download=True "
                f"or run 'robustact data fetch {spec.name}', or "
                f"{_manual_hint(spec, _default_root(data_dir))}"
            )
        folder = _download(spec, data_dir, progress)
    return spec.prepare(folder, user_cache_dir() / spec.name)


def _check_data_dir(data_dir: str | os.PathLike[str] | None) -> None:
    """A one-line error when an explicit data folder does not exist (a typo must not train on
    another copy of the data, nor download one into a new folder)."""
    if data_dir is None:
        return
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {what}; create it (robustact data fetch NAME "
                        f"--data-dir {root} downloads into it), or leave data_dir/--data-dir "
                        f"out to use ${ENV_VAR}, the system copy or the user cache")


def ensure_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Make Fashion-MNIST available (found, else Debian package, else download); its folder.

    Command-line friendly shorthand for ``fetch_dataset("fashion_mnist", data_dir)``.
    """
    return fetch_dataset("fashion_mnist", data_dir)
