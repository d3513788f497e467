"""Tests of robustact.data: parsers on generated files in the exact on-disk formats, lookup,
download (against a local HTTP server), and the deterministic, vectorised BatchLoader."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

import robustact.data.locate as locate
from robustact.data import (
    DATASETS,
    BatchLoader,
    DatasetInfo,
    ImageDataset,
    RemoteFile,
    clear_cache,
    dataset_info,
    download_file,
    ensure_fashion_mnist,
    fetch_dataset,
    find_dataset_dir,
    list_datasets,
    load_dataset,
)
from robustact.data.cifar import extract_archive
from robustact.data.download import NetworkError
from robustact.errors import ConfigError, DataError, UnknownNameError

REAL_SYSTEM_DIRS = dict(locate.SYSTEM_DIRS)
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- fixtures / writers


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No real cache, env root, system folder or apt-get; returns the apt packages 'installed'."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ROBUSTACT_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {})
    apt_calls: list[str] = []

    def fake_apt(package: str) -> bool:
        apt_calls.append(package)
        return False

    monkeypatch.setattr(locate, "apt_install", fake_apt)
    clear_cache()
    return apt_calls


def write_idx(path: Path, array: np.ndarray, magic: int | None = None,
              dims: tuple[int, ...] | None = None, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file: big-endian magic, dims, then the bytes."""
    dims = array.shape if dims is None else dims
    magic = (0x0800 | array.ndim) if magic is None else magic
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def make_idx_split(folder: Path, prefix: str, n: int, seed: int,
                   compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[0, 0, :] = 255  # top row bright: checks row-major (H, W) orientation
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return images, labels


def make_idx_dataset(folder: Path, compress: bool = True) -> dict[str, tuple[np.ndarray, ...]]:
    return {"train": make_idx_split(folder, "train", 12, 0, compress),
            "test": make_idx_split(folder, "t10k", 5, 1, compress)}


def pattern_chw(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 3, 32, 32) where each (c, h, w) has a distinct-looking value."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    base = (c * 85 + h * 7 + w * 3) % 256
    return np.stack([(base + seed * 11 + i * 13) % 256 for i in range(n)]).astype(np.uint8)


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    batch = {b"batch_label": b"testing batch", b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), 3072),
             b"filenames": [b"img_%d.png" % i for i in range(len(images))]}
    # Python 2 / numpy 1 wrote the official files: their pickles name numpy.core, not numpy._core
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    path.write_bytes(raw)


def make_cifar(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A ``cifar-10-batches-py`` folder: 5 train batches of 3 images, a test batch of 4."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = pattern_chw(3, i), np.array([i, (i + 3) % 10, 9])
        write_cifar_batch(folder / f"data_batch_{i}", x, y)
        train_x.append(x)
        train_y.append(y)
    test_x, test_y = pattern_chw(4, 9), np.array([0, 1, 2, 3])
    test_x[0] = 0
    test_x[0, 0] = 255  # image 0 pure red: the first 1024 bytes of a row are the red plane
    write_cifar_batch(folder / "test_batch", test_x, test_y)
    meta = {b"label_names": [n.encode() for n in dataset_info("cifar10").classes]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"train": (np.concatenate(train_x), np.concatenate(train_y)), "test": (test_x, test_y)}


def tar_folder(src: Path, archive: Path, arcname: str = "cifar-10-batches-py") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


def make_svhn(folder: Path, split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write ``<split>_32x32.mat`` with X (32, 32, 3, N) uint8, y (N, 1) in 1..10; returns the
    expected (N, 3, 32, 32) images and 0..9 labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    x[0, 5, 1, 0] = 200  # row 0, column 5, green channel of image 0
    x[31, 0, 2, 0] = 17  # last row, column 0, blue
    y = ((np.arange(n) % 10) + 1).astype(np.uint8).reshape(n, 1)  # includes 10
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return x.transpose(3, 2, 0, 1), labels


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_spec(monkeypatch: pytest.MonkeyPatch, name: str, base_url: str, files: list[Path],
               wrong_sum_for: str | None = None) -> None:
    """Point dataset ``name``'s downloads at ``base_url`` with the served files' real sums."""
    remotes = tuple(
        RemoteFile(p.name, (base_url + p.name,),
                   "0" * 64 if p.name == wrong_sum_for else sha256(p), p.stat().st_size)
        for p in files
    )
    spec = dataclasses.replace(DATASETS.get(name), remote_files=remotes)
    monkeypatch.setitem(DATASETS._entries, name, spec)


# --------------------------------------------------------------------------- registry, metadata


def test_names_aliases_and_info() -> None:
    assert list_datasets() == ["cifar10", "fashion_mnist", "mnist", "svhn"]
    for alias in ("fashion-mnist", "fmnist", "Fashion-MNIST", "fashion_mnist"):
        assert dataset_info(alias).name == "fashion_mnist"
    assert dataset_info("cifar-10").name == "cifar10"
    fm, mn, cf, sv = (dataset_info(n) for n in ("fashion_mnist", "mnist", "cifar10", "svhn"))
    assert (fm.crop_padding, fm.hflip, mn.crop_padding, mn.hflip) == (2, True, 2, False)
    assert (cf.crop_padding, cf.hflip, sv.crop_padding, sv.hflip) == (4, True, 4, False)
    assert fm.input_shape == (1, 28, 28) and cf.input_shape == (3, 32, 32)
    assert cf.mean == (0.4914, 0.4822, 0.4465) and mn.std == (0.3081,)
    assert fm.classes[0] == "T-shirt/top" and cf.classes[-1] == "truck" and sv.classes[0] == "0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fm.num_classes = 3  # type: ignore[misc]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="cifar10, fashion_mnist, mnist, svhn"):
        load_dataset("imagenet")
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        find_dataset_dir("kmnist")


def test_bad_split(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "mnist")
    with pytest.raises(ConfigError, match="train, test"):
        load_dataset("mnist", "val", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    written = make_idx_dataset(tmp_path / "fashion_mnist", compress=compress)
    for split in ("train", "test"):
        ds = load_dataset("fashion_mnist", split, data_dir=tmp_path, download=False)
        images, labels = written[split]
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert ds.images.shape == (len(images), 1, 28, 28) and ds.split == split
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    first = load_dataset("fashion_mnist", "train", data_dir=tmp_path, download=False)
    assert (first.images[0, 0, 0] == 255).all() and (first.images[0, 0, 1:] == 0).all()


def test_idx_truncated_gz(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    load_dataset("mnist", "test", data_dir=tmp_path, download=False)  # other split unaffected


def test_idx_bad_magic(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8),
              magic=0x00000901)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*magic 0x00000901"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_idx_wrong_count(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"5 images but .*t10k-labels-idx1-ubyte\.gz has 4"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_idx_header_promises_more_than_data(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, compress=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8),
              dims=(5, 28, 28), compress=False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 10], np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has label 10"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_batches_roundtrip(tmp_path: Path) -> None:
    written = make_cifar(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("cifar-10", split, data_dir=tmp_path, download=False)
        images, labels = written[split]
        assert ds.images.shape == (len(images), 3, 32, 32) and ds.info.name == "cifar10"
        assert torch.equal(ds.images, torch.from_numpy(images))
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    test = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert (test.images[0, 0] == 255).all() and (test.images[0, 1:] == 0).all()
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_2").read_bytes()
    row0 = pickle.loads(raw, encoding="bytes")[b"data"][0]
    train = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert torch.equal(train.images[3, 2, 1], torch.from_numpy(row0[2048 + 32:2048 + 64]))


def test_cifar_from_archive(tmp_path: Path) -> None:
    written = make_cifar(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    tar_folder(tmp_path / "src" / "cifar-10-batches-py", root / "cifar-10-python.tar.gz")
    assert find_dataset_dir("cifar10", root) == root  # the archive alone counts
    ds = load_dataset("cifar10", "train", data_dir=root, download=False)
    assert torch.equal(ds.images, torch.from_numpy(written["train"][0]))
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert find_dataset_dir("cifar10", root) == root / "cifar-10-batches-py"


@pytest.mark.parametrize("member", ["../evil", "/tmp/robustact-evil", "a/../../evil"])
def test_tar_path_traversal_refused(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    dest = tmp_path / "out"
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz contains an unsafe path"):
        extract_archive(archive, dest)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/robustact-evil").exists()


def test_tar_symlink_refused(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="link or special file"):
        extract_archive(archive, tmp_path / "out")


def test_cifar_truncated_archive(tmp_path: Path) -> None:
    make_cifar(tmp_path / "src")
    archive = tar_folder(tmp_path / "src" / "cifar-10-batches-py",
                         tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[:-300])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz is truncated or corrupt"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_cifar_corrupt_batch(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch is truncated or corrupt"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."  # os.system('echo pwned') if unpickled naively
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(DataError, match="refusing to load global os.system"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- SVHN


def test_svhn_roundtrip(tmp_path: Path) -> None:
    folder = tmp_path / "svhn"
    expected = {"train": make_svhn(folder, "train", 13, 0), "test": make_svhn(folder, "test", 4, 1)}
    for split, (images, labels) in expected.items():
        ds = load_dataset("svhn", split, data_dir=tmp_path, download=False)
        assert ds.images.shape == (len(images), 3, 32, 32) and ds.images.dtype == torch.uint8
        assert torch.equal(ds.images, torch.from_numpy(np.ascontiguousarray(images)))
        assert torch.equal(ds.labels, torch.from_numpy(labels))
    train = load_dataset("svhn", "train", data_dir=tmp_path, download=False)
    assert int(train.images[0, 1, 0, 5]) == 200 and int(train.images[0, 2, 31, 0]) == 17
    assert int(train.labels[9]) == 0 and set(train.labels.tolist()) == set(range(10))


def test_svhn_truncated(tmp_path: Path) -> None:
    make_svhn(tmp_path, "train", 3, 0)
    make_svhn(tmp_path, "test", 3, 1)
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="test_32x32.mat is truncated or corrupt"):
        load_dataset("svhn", "test", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- lookup


def test_lookup_layouts_and_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision_root = tmp_path / "tv"
    make_idx_dataset(torchvision_root / "FashionMNIST" / "raw")
    assert find_dataset_dir("fashion_mnist", torchvision_root) == (
        torchvision_root / "FashionMNIST" / "raw")
    direct = tmp_path / "direct"
    make_idx_dataset(direct)
    assert find_dataset_dir("fmnist", direct) == direct
    assert find_dataset_dir("fashion_mnist") is None

    env_root = tmp_path / "env"
    make_idx_dataset(env_root / "fashion_mnist")
    monkeypatch.setenv("ROBUSTACT_DATA", str(env_root))
    assert find_dataset_dir("fashion_mnist") == env_root / "fashion_mnist"
    assert find_dataset_dir("fashion_mnist", direct) == direct  # data_dir comes first
    assert find_dataset_dir("mnist") is None  # a shared root needs a per-dataset folder

    system = tmp_path / "usr-share"
    make_idx_dataset(system)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {"fashion_mnist": (system,)})
    assert find_dataset_dir("fashion_mnist") == env_root / "fashion_mnist"
    monkeypatch.delenv("ROBUSTACT_DATA")
    assert find_dataset_dir("fashion_mnist") == system

    cache = tmp_path / "xdg-cache" / "robustact" / "mnist"
    make_idx_dataset(cache)
    assert find_dataset_dir("mnist") == cache


def test_missing_without_download_says_how(tmp_path: Path, isolated: list[str]) -> None:
    (tmp_path / "nowhere").mkdir()  # an empty folder (a folder that does not exist: test_inputs)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert "\n" not in message and "download=True" in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    assert str(tmp_path / "nowhere" / "mnist") in message
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*www\.cs\.toronto\.edu"):
        fetch_dataset("cifar10", download=False)
    assert isolated == []  # no apt-get without download


# --------------------------------------------------------------------------- download


def test_download_file_checksum(http_root: tuple[Path, str], tmp_path: Path) -> None:
    served, base = http_root
    payload = bytes(range(256)) * 4000
    (served / "blob.bin").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "dl" / "blob.bin"
    assert download_file(base + "blob.bin", dest, good, progress=False) == dest
    assert dest.read_bytes() == payload

    bad_dest = tmp_path / "dl2" / "blob.bin"
    with pytest.raises(DataError, match=r"dl2/blob\.bin downloaded from .* has SHA-256"):
        download_file(base + "blob.bin", bad_dest, "ab" * 32, progress=False)
    assert list(bad_dest.parent.iterdir()) == []  # neither the file nor a .part is left

    with pytest.raises(NetworkError, match="could not download"):
        download_file(base + "missing.bin", tmp_path / "dl3" / "x", progress=False)
    assert list((tmp_path / "dl3").iterdir()) == []


def test_download_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    dest = download_file(src.as_uri(), tmp_path / "out" / "dst.bin", sha256(src), progress=False)
    assert dest.read_bytes() == b"hello"


def test_fetch_downloads_and_loads(http_root: tuple[Path, str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    served, base = http_root
    written = make_idx_dataset(served)
    serve_spec(monkeypatch, "mnist", base, sorted(served.iterdir()))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    folder = fetch_dataset("mnist", data_dir, progress=False)
    assert folder == data_dir / "mnist" and len(list(folder.iterdir())) == 4
    ds = load_dataset("mnist", "test", data_dir=data_dir, download=False)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(written["test"][0]))


def test_fetch_to_cache_and_env(http_root: tuple[Path, str], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    served, base = http_root
    make_svhn(served, "train", 2, 0)
    make_svhn(served, "test", 2, 1)
    serve_spec(monkeypatch, "svhn", base, sorted(served.iterdir()))
    assert fetch_dataset("svhn", progress=False) == tmp_path / "xdg-cache" / "robustact" / "svhn"
    monkeypatch.setenv("ROBUSTACT_DATA", str(tmp_path / "env"))
    clear_cache()
    assert len(load_dataset("svhn", "test")) == 2  # found in the cache, nothing downloaded
    assert not (tmp_path / "env").exists()


def test_fetch_checksum_mismatch(http_root: tuple[Path, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    served, base = http_root
    make_idx_dataset(served)
    serve_spec(monkeypatch, "mnist", base, sorted(served.iterdir()),
               wrong_sum_for="t10k-labels-idx1-ubyte.gz")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz downloaded .* expected 0+"):
        fetch_dataset("mnist", tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_fetch_cifar_archive(http_root: tuple[Path, str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    served, base = http_root
    written = make_cifar(tmp_path / "src")
    tar_folder(tmp_path / "src" / "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    serve_spec(monkeypatch, "cifar10", base, [served / "cifar-10-python.tar.gz"])
    (tmp_path / "data").mkdir()
    folder = fetch_dataset("cifar10", tmp_path / "data", progress=False)
    assert folder == tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    ds = load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert torch.equal(ds.images, torch.from_numpy(written["test"][0]))


def test_no_network_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            isolated: list[str]) -> None:
    spec = DATASETS.get("fashion_mnist")
    dead = tuple(dataclasses.replace(r, urls=("http://127.0.0.1:9/" + r.filename,))
                 for r in spec.remote_files)
    monkeypatch.setitem(DATASETS._entries, "fashion_mnist",
                        dataclasses.replace(spec, remote_files=dead))
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError) as info:
        fetch_dataset("fashion-mnist", tmp_path / "d", progress=False)
    message = str(info.value)
    assert "could not download http://127.0.0.1:9/" in message and "by hand" in message
    assert "train-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "d" / "fashion_mnist") in message
    assert "\n" not in message
    assert isolated == []  # an explicit data folder: no system copy installed beside it
    with pytest.raises(DataError):
        fetch_dataset("fashion-mnist", progress=False)
    assert isolated == ["dataset-fashion-mnist"]  # no data folder: apt-get is tried first


def test_fetch_uses_apt_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr-share-datasets"
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {"fashion_mnist": (system,)})
    monkeypatch.setattr(locate, "apt_install",
                        lambda package: bool(make_idx_dataset(system)))
    assert fetch_dataset("fashion_mnist", progress=False) == system
    assert ensure_fashion_mnist() == system


def test_apt_install_updates_then_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real apt_install, with its subprocess calls faked
    calls: list[list[str]] = []
    results = iter([False, True, True])

    def fake_run(cmd: list[str]) -> bool:
        calls.append(cmd)
        return next(results)

    monkeypatch.setattr(locate, "_run_quietly", fake_run)
    monkeypatch.setattr(locate.os, "geteuid", lambda: 0)
    monkeypatch.setattr(locate.shutil, "which", lambda name: "/usr/bin/" + name)
    assert locate.apt_install("dataset-fashion-mnist")
    assert [c[:2] for c in calls] == [["apt-get", "install"], ["apt-get", "update"],
                                      ["apt-get", "install"]]
    assert calls[0][-1] == "dataset-fashion-mnist" and "-y" in calls[0]
    monkeypatch.setattr(locate.os, "geteuid", lambda: 1000)
    calls.clear()
    assert not locate.apt_install("dataset-fashion-mnist") and calls == []


# --------------------------------------------------------------------------- ImageDataset


def synthetic(n: int = 10, name: str = "cifar10", seed: int = 0,
              labels: torch.Tensor | None = None) -> ImageDataset:
    info = dataset_info(name)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *info.input_shape), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) if labels is None else labels
    return ImageDataset(images, labels, info, "train")


def test_subset() -> None:
    ds = synthetic(10)
    first = ds.subset(4)
    assert len(first) == 4 and torch.equal(first.images, ds.images[:4])
    assert len(ds.subset(100)) == 10
    picked = ds.subset([7, 2, 2])
    assert picked.labels.tolist() == [7, 2, 2] and torch.equal(picked.images[0], ds.images[7])
    assert picked.info is ds.info and picked.split == "train"
    with pytest.raises(ConfigError):
        ds.subset([10])
    with pytest.raises(ConfigError):
        ds.subset(-1)


# --------------------------------------------------------------------------- BatchLoader


def collect(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_loader_plain_batches() -> None:
    ds = synthetic(10)
    loader = BatchLoader(ds, batch_size=4)
    batches = collect(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 32, 32)
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(torch.cat([b[0] for b in batches]), ds.images.float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    assert loader.dataset is ds and loader.batch_size == 4


def test_loader_drop_last() -> None:
    loader = BatchLoader(synthetic(10), batch_size=4, shuffle=True, drop_last=True)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]
    assert len(BatchLoader(synthetic(8), batch_size=4, drop_last=True)) == 2


def test_loader_shuffle_is_a_permutation() -> None:
    loader = BatchLoader(synthetic(50), batch_size=8, shuffle=True, augment=True, seed=3)
    for epoch in range(3):
        loader.set_epoch(epoch)
        seen = torch.cat([y for _, y in loader])
        assert sorted(seen.tolist()) == list(range(50))
        assert not torch.equal(seen, torch.arange(50))


def test_loader_determinism() -> None:
    ds = synthetic(40)
    loader = BatchLoader(ds, batch_size=16, shuffle=True, augment=True, seed=7)
    loader.set_epoch(2)
    a, b = collect(loader), collect(loader)
    resumed = BatchLoader(ds, batch_size=16, shuffle=True, augment=True, seed=7)
    resumed.set_epoch(2)
    c = collect(resumed)
    for (xa, ya), (xb, yb), (xc, yc) in zip(a, b, c, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)
    tail = list(resumed.batches(start=1))
    assert len(tail) == 2 and torch.equal(tail[0][0], a[1][0])
    loader.set_epoch(3)
    d = collect(loader)
    assert not torch.equal(a[0][1], d[0][1])
    other_seed = BatchLoader(ds, batch_size=16, shuffle=True, augment=True, seed=8)
    other_seed.set_epoch(2)
    assert not torch.equal(collect(other_seed)[0][1], a[0][1])


def test_loader_augment_without_shuffle_still_varies_by_epoch() -> None:
    loader = BatchLoader(synthetic(16), batch_size=16, augment=True)
    x0 = collect(loader)[0][0]
    loader.set_epoch(1)
    x1, y1 = collect(loader)[0]
    assert torch.equal(y1, torch.arange(16)) and not torch.equal(x0, x1)


def shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content of (C, H, W) down by dy and right by dx, filling with zeros."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_crop_shifts_by_up_to_padding() -> None:
    pad, n = 2, 400
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(1, 256, (1, 1, 28, 28), dtype=torch.uint8, generator=gen)
    ds = ImageDataset(image.expand(n, 1, 28, 28).contiguous(), torch.zeros(n, dtype=torch.long),
                      dataset_info("mnist"), "train")
    loader = BatchLoader(ds, batch_size=128, augment=True, seed=5)
    assert (loader.crop_padding, loader.hflip) == (pad, False)
    reference = image[0].float() / 255
    shifts = set()
    for x, _ in loader:
        for sample in x:
            found = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                     if torch.equal(sample, shift(reference, dy, dx))]
            assert len(found) == 1
            shifts.add(found[0])
    assert shifts == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}


def test_crop_padding_override_and_single_pixel() -> None:
    n = 256
    image = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    image[:, :, 10, 20] = 255
    ds = ImageDataset(image, torch.zeros(n, dtype=torch.long), dataset_info("mnist"), "train")
    x = collect(BatchLoader(ds, batch_size=n, augment=True, crop_padding=5))[0][0]
    rows, cols = torch.nonzero(x[:, 0] == 1, as_tuple=True)[1:]
    assert len(rows) == n and x.sum() == n  # the pixel moves, nothing else appears
    # content moves by padding - offset, offset uniform in [0, 2 * padding]: both extremes occur
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 15, 15, 25)
    none = collect(BatchLoader(ds, batch_size=n, augment=True, crop_padding=0))[0][0]
    assert torch.equal(none, image.float() / 255)


def test_flip_is_horizontal_mirror() -> None:
    ds = synthetic(64, name="fashion_mnist")
    loader = BatchLoader(ds, batch_size=64, augment=True, crop_padding=0, seed=2)
    assert loader.hflip
    x = collect(loader)[0][0]
    original = ds.images.float() / 255
    same = (x == original).flatten(1).all(1)
    mirrored = (x == original.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    no_flip = BatchLoader(ds, batch_size=64, augment=True, crop_padding=0, hflip=False)
    assert torch.equal(collect(no_flip)[0][0], original)


def test_resize() -> None:
    ds = synthetic(6, name="fashion_mnist")
    x, _ = collect(BatchLoader(ds, batch_size=6, resize=32))[0]
    assert x.shape == (6, 1, 32, 32) and x.min() >= 0 and x.max() <= 1
    x, _ = collect(BatchLoader(ds, batch_size=6, resize=(20, 24), augment=True))[0]
    assert x.shape == (6, 1, 20, 24)
    with pytest.raises(ConfigError):
        BatchLoader(ds, resize=0)


def test_loader_device_and_pin_defaults() -> None:
    loader = BatchLoader(synthetic(4), batch_size=2, device="cpu")
    x, y = next(iter(loader))
    assert x.device.type == "cpu" and y.device.type == "cpu" and not loader.pin_memory
    with pytest.raises(ConfigError):
        BatchLoader(synthetic(4), batch_size=0)


# --------------------------------------------------------------------------- real data


def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Debian package's files (present on the dev machines and in CI)."""
    monkeypatch.setattr(locate, "SYSTEM_DIRS", REAL_SYSTEM_DIRS)
    assert find_dataset_dir("fashion_mnist") == DEBIAN_FASHION
    train = load_dataset("fashion_mnist", "train", download=False)
    test = load_dataset("fashion_mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.info.num_classes == 10 and train.images.dtype == torch.uint8
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - train.info.mean[0]) < 1e-3
    assert abs(pixels.std().item() - train.info.std[0]) < 1e-3
    assert load_dataset("fmnist", "train", download=False).images is train.images  # cached
    x, y = next(iter(BatchLoader(train, batch_size=256, shuffle=True, augment=True)))
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)


def test_dataset_info_type() -> None:
    assert isinstance(dataset_info("svhn"), DatasetInfo)
