"""The registered datasets: where their files come from and how to read them.

Each dataset is a function returning its :class:`DatasetSpec`, registered where it is defined
with ``@DATASETS.register_built(name)`` (the registry holds the spec the function returns).

SHA-256 sums of the official files (checked only on files this package downloads; local copies
are trusted to the parsers' structural checks, since e.g. Debian's Fashion-MNIST is recompressed):

- Fashion-MNIST: tensorflow/datasets ``tensorflow_datasets/url_checksums/fashion_mnist.txt``
  (also in torchvision-style and pytorch/vision-prototype ``_CHECKSUMS`` tables).
- MNIST: tensorflow/datasets ``tensorflow_datasets/url_checksums/mnist.txt`` (the CVDF mirror of
  yann.lecun.com; the ossci-datasets mirror serves the same bytes, e.g. torchvision's MD5s match).
- CIFAR-10 python: tensorflow/datasets ``tensorflow_datasets/url_checksums/cifar10.csv`` and
  keras ``datasets/cifar10.py`` (``file_hash``); MD5 c58f30108f718f92721af3b95e74349a.
- SVHN: tensorflow/datasets ``tensorflow_datasets/url_checksums/svhn_cropped.txt``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from robustact.data import cifar, idx, svhn
from robustact.data.download import RemoteFile
from robustact.data.info import CIFAR10, FASHION_MNIST, MNIST, SVHN, DatasetInfo
from robustact.errors import DataError
from robustact.registry import Registry

Reader = Callable[[list[Path]], tuple[torch.Tensor, torch.Tensor]]


def _keep(directory: Path, fallback: Path) -> Path:
    return directory


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, download and read one dataset.

    Attributes:
        info: static metadata.
        remote_files: the official files, as downloaded.
        subdirs: folders tried, in order, inside a data root ("" = the root itself).
        present: whether a folder holds the whole dataset (possibly still archived).
        prepare: ``prepare(found_dir, writable_fallback_dir)`` makes the files readable (e.g.
            extracts an archive) and returns the folder to read them from.
        split_files: ``split_files(folder, split)`` -> files of that split, None if missing.
        read: files of a split -> (uint8 images (N, C, H, W), int64 labels (N,)).
        homepage: where a person can read about and fetch the dataset.
        sizes: images per split in the official files (``data fetch`` checks them).
    """

    info: DatasetInfo
    remote_files: tuple[RemoteFile, ...]
    subdirs: tuple[str, ...]
    present: Callable[[Path], bool]
    split_files: Callable[[Path, str], list[Path] | None]
    read: Reader
    homepage: str
    prepare: Callable[[Path, Path], Path] = _keep
    sizes: dict[str, int] | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def file_names(self) -> list[str]:
        return [remote.filename for remote in self.remote_files]


def _idx_remotes(base_urls: tuple[str, ...], sums: dict[str, tuple[int, str]]) -> tuple[
        RemoteFile, ...]:
    return tuple(
        RemoteFile(fname, tuple(base + fname for base in base_urls), sha, size)
        for fname, (size, sha) in sums.items()
    )


def _read_idx(num_classes: int) -> Reader:
    def read(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        images_path, labels_path = paths
        return idx.load_idx_pair(images_path, labels_path, num_classes)

    return read


def _read_svhn(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    (path,) = paths
    return svhn.load_svhn_mat(path)


def _cifar_present(directory: Path) -> bool:
    return cifar.batches_present(directory) or (directory / cifar.ARCHIVE_NAME).is_file()


def _cifar_prepare(directory: Path, fallback: Path) -> Path:
    """The folder holding the batches; extracts the archive (into ``fallback`` if need be)."""
    for candidate in (directory, directory / cifar.BATCH_DIR, fallback / cifar.BATCH_DIR):
        if cifar.batches_present(candidate):
            return candidate
    archive = directory / cifar.ARCHIVE_NAME
    try:
        return cifar.extract_archive(archive, directory)
    except OSError as exc:  # read-only folder: extract next to our own cache instead
        try:
            return cifar.extract_archive(archive, fallback)
        except OSError as exc2:
            raise DataError(
                f"cannot extract {archive} ({exc}; {exc2}); extract it by hand with "
                f"'tar xzf {archive}' in a writable folder and pass that folder as data_dir"
            ) from exc2


_FASHION_SUMS = {  # tensorflow/datasets url_checksums/fashion_mnist.txt
    "train-images-idx3-ubyte.gz": (
        26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    "train-labels-idx1-ubyte.gz": (
        29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    "t10k-images-idx3-ubyte.gz": (
        4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    "t10k-labels-idx1-ubyte.gz": (
        5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
}

_MNIST_SUMS = {  # tensorflow/datasets url_checksums/mnist.txt
    "train-images-idx3-ubyte.gz": (
        9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (
        28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (
        1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (
        4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # mirror of yann.lecun.com/exdb/mnist
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the URLs tensorflow/datasets checks
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"

DATASETS: Registry[DatasetSpec] = Registry("dataset")


@DATASETS.register_built("fashion_mnist", aliases=("fashion-mnist", "fmnist", "fashionmnist"))
def fashion_mnist_spec() -> DatasetSpec:
    """Zalando's Fashion-MNIST: idx files, also found in torchvision's and Keras' layouts."""
    return DatasetSpec(
        info=FASHION_MNIST,
        remote_files=_idx_remotes((FASHION_MNIST_URL,), _FASHION_SUMS),
        subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST",
                 "fashion", "data/fashion"),
        present=idx.idx_present,
        split_files=idx.idx_split_files,
        read=_read_idx(FASHION_MNIST.num_classes),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        sizes={"train": 60000, "test": 10000},
    )


@DATASETS.register_built("mnist")
def mnist_spec() -> DatasetSpec:
    """MNIST digits: idx files from the ossci or the CVDF mirror."""
    return DatasetSpec(
        info=MNIST,
        remote_files=_idx_remotes(MNIST_URLS, _MNIST_SUMS),
        subdirs=("mnist", "MNIST/raw", "MNIST"),
        present=idx.idx_present,
        split_files=idx.idx_split_files,
        read=_read_idx(MNIST.num_classes),
        homepage="http://yann.lecun.com/exdb/mnist/",
        sizes={"train": 60000, "test": 10000},
    )


@DATASETS.register_built("cifar10", aliases=("cifar-10", "cifar_10"))
def cifar10_spec() -> DatasetSpec:
    """CIFAR-10: the python-pickle batches, read from the archive or an extracted folder."""
    return DatasetSpec(
        info=CIFAR10,
        remote_files=(RemoteFile(  # tensorflow/datasets url_checksums/cifar10.csv; keras cifar10.py
            cifar.ARCHIVE_NAME, (CIFAR10_URL,),
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071),),
        subdirs=tuple(
            sub for base in ("", "cifar10/", "cifar-10/", "CIFAR10/", "cifar/")
            for sub in (f"{base}{cifar.BATCH_DIR}", base.rstrip("/"))
        ),
        present=_cifar_present,
        prepare=_cifar_prepare,
        split_files=cifar.batch_files,
        read=cifar.load_cifar_batches,
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        sizes={"train": 50000, "test": 10000},
    )


@DATASETS.register_built("svhn")
def svhn_spec() -> DatasetSpec:
    """SVHN, the cropped 32x32 digits: one MATLAB file per split."""
    return DatasetSpec(
        info=SVHN,
        remote_files=(  # tensorflow/datasets url_checksums/svhn_cropped.txt
            RemoteFile("train_32x32.mat", (SVHN_URL + "train_32x32.mat",),
                       "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                       182040794),
            RemoteFile("test_32x32.mat", (SVHN_URL + "test_32x32.mat",),
                       "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                       64275384),
        ),
        subdirs=("svhn", "SVHN", ""),
        present=svhn.svhn_present,
        split_files=svhn.svhn_split_files,
        read=_read_svhn,
        homepage="http://ufldl.stanford.edu/housenumbers/",
        sizes={"train": 73257, "test": 26032},
    )
