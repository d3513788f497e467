"""``robustact weights fetch`` against a local HTTP server: a good file, a bad checksum, an
unreachable host; and ``pretrained:`` finding fetched weights by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from robustact.cli import main
from robustact.errors import CheckpointError
from robustact.models import create_model
from robustact.models.weights import WEIGHTS, PublishedWeights, resolve_weights


def _tiny_resnet_file(folder: Path) -> tuple[Path, str]:
    """A torchvision-format ResNet18 state dict (our ImageNet ResNet18's weights under
    torchvision's key names), saved; returns (path, its SHA-256)."""
    from robustact.models.pretrained import resnet18_key_map

    ours = create_model("resnet18", num_classes=1000, stem="imagenet").state_dict()
    torchvision = {tv: ours[mine] for tv, mine in resnet18_key_map().items()}
    path = folder / "resnet18-test.pth"
    torch.save(torchvision, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_fetch_a_good_file_then_pretrained_finds_it_by_name(
        http_root: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, url = http_root
    served_file, digest = _tiny_resnet_file(root)
    entry = PublishedWeights("resnet18-test.pth", url + served_file.name, digest,
                             served_file.stat().st_size, "resnet18", "test file")
    monkeypatch.setitem(WEIGHTS, "resnet18-test", entry)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTACT_WEIGHTS", str(cache))
    with pytest.raises(CheckpointError, match="robustact weights fetch resnet18-test"):
        resolve_weights("resnet18-test")
    assert main(["weights", "fetch", "resnet18-test", "--no-progress"]) == 0
    fetched = cache / "resnet18-test.pth"
    assert capsys.readouterr().out.strip() == str(fetched)
    assert fetched.read_bytes() == served_file.read_bytes()
    served_file.unlink()  # a second fetch finds the checked file in the cache, no download
    assert main(["weights", "fetch", "resnet18-test", "--no-progress"]) == 0
    model = create_model("resnet18", num_classes=10, stem="imagenet", pretrained="resnet18-test")
    want = torch.load(fetched, weights_only=True)["conv1.weight"]
    assert torch.equal(model.state_dict()["conv1.weight"], want)  # loaded, not a fresh init
    assert main(["weights", "list", "--dir", str(cache)]) == 0
    assert "resnet18-test       resnet18  cached" in capsys.readouterr().out


def test_fetch_with_a_bad_checksum_keeps_nothing(
        http_root: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, url = http_root
    (root / "resnet18-f37072fd.pth").write_bytes(b"not the published file")
    cache = tmp_path / "cache"
    code = main(["weights", "fetch", "resnet18-imagenet", "--dir", str(cache), "--no-progress",
                 "--url", url + "resnet18-f37072fd.pth"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "SHA-256" in line and WEIGHTS["resnet18-imagenet"].sha256 in line
    assert not cache.exists() or not any(cache.iterdir())  # no file, no .tmp


def test_fetch_from_an_unreachable_host_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["weights", "fetch", "alexnet-imagenet", "--dir", str(tmp_path), "--no-progress",
                 "--url", "http://127.0.0.1:9/alexnet-owt-7be5be79.pth"])
    assert code == 2
    assert "could not download http://127.0.0.1:9/" in _one_error_line(capsys)
    assert not any(tmp_path.iterdir())
    assert main(["weights", "fetch", "vgg-imagenet"]) == 2
    assert "unknown weights 'vgg-imagenet'" in _one_error_line(capsys)
