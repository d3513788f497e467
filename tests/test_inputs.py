"""Bad inputs and failing disks give one-line errors and lose nothing: NaN/inf images and logits,
empty batches, full or read-only disks, a file where a folder belongs, a missing data folder, a
truncated dataset, damaged and hostile checkpoints (issue 16)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustact.attacks import create_attack
from robustact.cli import main
from robustact.data import clear_cache, load_dataset
from robustact.errors import CheckpointError, DataError, InputError, RobustactError
from robustact.eval.checkpoint import check_output, write_robustness
from robustact.eval.record import EvalRecord
from robustact.eval.robustness import evaluate
from robustact.files import atomic_path, check_writable, write_atomic, write_json
from robustact.models.checkpoint import build_model, load_model

REPO = Path(__file__).resolve().parents[1]


class Linear(nn.Module):
    """logits = W flatten(x) + b; with ``nan_from`` set, rows whose first pixel is at least
    that value get NaN logits (a model that breaks on some inputs only)."""

    def __init__(self, n_in: int = 16, classes: int = 3, nan_from: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(n_in, classes)
        self.nan_from = nan_from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lin(x.flatten(1))
        if self.nan_from is not None:
            broken = x.flatten(1)[:, 0] >= self.nan_from
            logits = torch.where(broken[:, None], torch.full_like(logits, float("nan")), logits)
        return logits


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.rand(n, 1, 4, 4) * 0.8 + 0.1
    return x, torch.arange(n) % 3


def one_error_line(err: str) -> str:
    """The single stderr line, checked to be an ``error:`` line with no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- non-finite, empty

ATTACKS = ["fgsm", "pgd", "apgd", "deepfool", "cw", "fab", "square:queries=20"]


@pytest.mark.parametrize("spec", ATTACKS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixel_is_refused(spec: str, value: float) -> None:
    name, _, options = spec.partition(":")
    kwargs = {k: int(v) for k, v in (o.split("=") for o in options.split(",") if o)}
    x, y = batch()
    x[2, 0, 1, 1] = value
    with pytest.raises(InputError, match=r"1 of 4 images hold NaN or inf pixels \(the first "
                                         r"at index 2\)"):
        create_attack(name, eps=0.1, **kwargs)(Linear(), x, y)


def test_empty_batch_is_refused() -> None:
    with pytest.raises(InputError, match="the batch is empty"):
        create_attack("pgd", eps=0.1)(Linear(), torch.zeros(0, 1, 4, 4),
                                      torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("spec", ATTACKS)
def test_nan_logits_never_count_as_success(spec: str) -> None:
    name, _, options = spec.partition(":")
    kwargs = {k: int(v) for k, v in (o.split("=") for o in options.split(",") if o)}
    x, y = batch(6)
    x[:, 0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.95, 0.1, 0.99])
    attack = create_attack(name, eps=0.02, **kwargs)
    with pytest.raises(InputError, match="returned NaN/inf logits on 2 of 6 points"):
        attack(Linear(nan_from=0.9), x, y)
    with pytest.raises(InputError, match="returned NaN/inf logits on 6 of 6 points"):
        attack(Linear(nan_from=-1.0), x, y)
    result = attack(Linear(), x, y)  # the same points with a sound model: no error
    assert result.success.shape == (6,)


def test_evaluate_refuses_nan_images_logits_and_empty_input() -> None:
    x, y = batch(8)
    bad = x.clone()
    bad[5, 0, 0, 0] = float("nan")
    run = dict(attacks=["fgsm"], eps_list=[0.05], diagnose=False)
    with pytest.raises(InputError, match=r"evaluate: 1 of 8 images hold NaN"):
        evaluate(Linear(), (bad, y), **run)
    x[:3, 0, 0, 0] = 0.97
    with pytest.raises(InputError, match=r"clean points\): the model returned NaN/inf logits "
                                         r"on 3 of 8 points"):
        evaluate(Linear(nan_from=0.9), (x, y), **run)
    with pytest.raises(InputError, match="n = 0"):
        evaluate(Linear(), (x, y), n_examples=0, **run)
    with pytest.raises(InputError, match="the loader is empty"):
        evaluate(Linear(), [], **run)
    report = evaluate(Linear(), (x, y), **run)  # sound model: a real number
    assert 0.0 <= report.rows()[0]["robust_accuracy"] <= 1.0


# --------------------------------------------------------------------------- atomic writes


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync", "body"])
def test_atomic_path_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   failing: str) -> None:
    target = tmp_path / "out" / "record.json"
    write_atomic(target, "old\n")
    if failing != "body":
        monkeypatch.setattr(os, failing.split(".")[1], _enospc)
    with pytest.raises(OSError) as info, atomic_path(target) as tmp:
        tmp.write_text("new\n")
        if failing == "body":
            _enospc()
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_text() == "old\n" and tmp_files(tmp_path) == []


def test_file_size_limit_leaves_no_tmp(tmp_path: Path) -> None:
    """A real failing write: ``ulimit -f`` makes the kernel refuse to grow the file (EFBIG;
    Python ignores SIGXFSZ)."""
    target = tmp_path / "big.json"
    code = ("import sys; from robustact.files import write_json\n"
            "try:\n    write_json(sys.argv[1], ['x' * 100] * 1000)\n"
            "except OSError as exc:\n    print(exc.errno)\n")
    done = subprocess.run(["bash", "-c", f'ulimit -f 4; "{sys.executable}" -c "$0" "$1"',
                           code, str(target)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(errno.EFBIG)
    assert not target.exists() and tmp_files(tmp_path) == []


def test_check_writable_says_why(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "new" / "folder").is_dir()
    assert list((tmp_path / "new" / "folder").iterdir()) == []  # the probe is gone
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RobustactError, match=r"afile.*\((EEXIST|ENOTDIR)\); a file stands "
                                             "where a folder is needed"):
        check_output(tmp_path / "afile" / "robustness")


# --------------------------------------------------------------------------- results kept


@pytest.fixture()
def evaluation() -> tuple[EvalRecord, object]:
    x, y = batch(8)
    report = evaluate(Linear(), (x, y), ["fgsm"], [0.05], diagnose=False)
    return EvalRecord.from_dict({"model": "linear", **report.to_dict()}), report


def test_unwritable_result_is_saved_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              evaluation: tuple[EvalRecord, object]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    record, report = evaluation
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(RobustactError) as info:
        write_robustness(record, report, tmp_path / "afile" / "robustness")
    message = str(info.value)
    assert "\n" not in message and "a file stands where a folder is needed" in message
    kept = Path(message.split("saved to ")[1].split(".json")[0] + ".json")
    assert kept.parent == tmp_path / "cache" / "robustact" / "unsaved"
    assert json.loads(kept.read_text()) == json.loads(json.dumps(record.to_dict()))
    assert kept.with_suffix(".csv").read_text().startswith("attack")


@pytest.mark.parametrize(("code", "hint"), [(errno.ENOSPC, "free some space"),
                                             (errno.EROFS, "the file system is read-only"),
                                             (errno.EACCES, "you may not write there")])
def test_unwritable_disk_keeps_result_and_leaves_no_tmp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, hint: str,
        evaluation: tuple[EvalRecord, object]) -> None:
    """A full disk fails the rename; a read-only or foreign folder fails creating the file
    (tests run as root, whom chmod does not stop: the faults are injected)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    record, report = evaluation
    out = tmp_path / "runs"
    out.mkdir()
    real_replace, real_mkstemp = os.replace, tempfile.mkstemp

    def fail() -> None:
        raise OSError(code, os.strerror(code), str(out))

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == out and code == errno.ENOSPC:
            fail()
        real_replace(src, dst)

    def mkstemp(*args: object, dir: Path, **kwargs: object) -> tuple[int, str]:  # noqa: A002
        if Path(dir) == out and code != errno.ENOSPC:
            fail()
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    name = errno.errorcode[code]
    with pytest.raises(RobustactError, match=rf"{out}: .*\({name}\); {hint}.*; the result was "
                                             "saved to "):
        write_robustness(record, report, out / "robustness")
    assert tmp_files(tmp_path) == [] and list(out.iterdir()) == []
    kept = list((tmp_path / "cache" / "robustact" / "unsaved").glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["rows"] == record.rows


def test_nowhere_to_write_says_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     evaluation: tuple[EvalRecord, object]) -> None:
    monkeypatch.setattr(os, "replace", _enospc)  # every disk is full
    with pytest.raises(RobustactError, match="no fallback folder could hold it either; free "
                                             "some space and rerun the same command"):
        write_robustness(*evaluation, tmp_path / "robustness")
    assert tmp_files(tmp_path) == []


def test_shard_save_failure_does_not_stop_the_evaluation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustact.eval.shards import ShardDir

    x, y = batch(8)
    expected = evaluate(Linear(), (x, y), ["fgsm"], [0.05], diagnose=False, block=4)
    monkeypatch.setattr(os, "replace", _enospc)
    logged: list[str] = []
    report = evaluate(Linear(), (x, y), ["fgsm"], [0.05], diagnose=False, block=4,
                      shards=ShardDir(tmp_path / "shards"), progress=logged.append)
    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert timeless(report.rows()) == timeless(expected.rows())
    assert any("could not save finished blocks" in m and "ENOSPC" in m for m in logged)
    assert tmp_files(tmp_path) == []


# --------------------------------------------------------------------------- command line


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    """A small_cnn checkpoint for Fashion-MNIST, untrained (loading and I/O are tested)."""
    config = {"model": "small_cnn", "dataset": "fashion_mnist", "activation": "relu"}
    torch.manual_seed(0)
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"model_state": build_model(config).state_dict(), "config": config}, path)
    return path


def test_os_error_in_a_command_is_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    rc = main(["data", "fetch", "fashion_mnist", "--data-dir", str(tmp_path / "afile" / "d")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(tmp_path / "afile") in line
    assert "a file stands where a folder is needed" in line


def test_attack_out_naming_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "afile").write_text("x")
    rc = main(["attack", "--checkpoint", str(checkpoint), "--suite", "none", "--attacks",
               "fgsm", "--eps", "0.1", "-n", "4", "--no-diagnostics", "--device", "cpu",
               "--out", str(tmp_path / "afile" / "res")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "a file stands where a folder is needed" in line
    if "saved to " in line:  # computed, then kept elsewhere (else refused before computing)
        kept = Path(line.split("saved to ")[1].split(".json")[0] + ".json")
        assert json.loads(kept.read_text())["n"] == 4
    assert tmp_files(tmp_path) == []


def test_attack_on_no_points(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["attack", "--checkpoint", str(checkpoint), "--suite", "none", "--attacks",
               "fgsm", "--eps", "0.1", "-n", "0", "--no-diagnostics", "--device", "cpu"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "0" in line and not (checkpoint.parent / "shards").exists()


def test_data_dir_that_does_not_exist(tmp_path: Path, checkpoint: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="data folder .*no-such-folder does not exist"):
        load_dataset("fashion_mnist", "test", data_dir=missing)
    rc = main(["eval", "--checkpoint", str(checkpoint), "--n", "4", "--device", "cpu",
               "--data-dir", str(missing)])
    assert rc == 2 and "does not exist" in one_error_line(capsys.readouterr().err)
    assert not missing.exists()


def test_data_dir_without_the_dataset_is_not_replaced_by_another_copy(tmp_path: Path) -> None:
    clear_cache()
    assert len(load_dataset("fashion_mnist", "test")) == 10000  # the system copy is there
    searched = f"dataset fashion_mnist not found \\(searched {tmp_path}\\)"
    with pytest.raises(DataError, match=searched):
        load_dataset("fashion_mnist", "test", data_dir=tmp_path, download=False)


def _write_idx(path: Path, array: np.ndarray) -> None:
    raw = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw))


def _idx_dataset(folder: Path, n_train: int, n_test: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))


def test_data_fetch_refuses_a_truncated_dataset(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _idx_dataset(tmp_path / "mnist", 60000, 10000)
    assert main(["data", "fetch", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "mnist")

    images = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:2000])  # cut short, as an interrupted copy leaves it
    assert main(["data", "fetch", "mnist", "--data-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{images} is truncated or corrupt" in line and "download it again" in line

    _idx_dataset(tmp_path / "mnist", 600, 10000)  # consistent files, but not all of them
    assert main(["data", "fetch", "mnist", "--data-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "holds 600 train images, the official mnist has 60000" in line


# --------------------------------------------------------------------------- checkpoints


class Hostile:
    """Unpickling it would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_hostile_checkpoint_is_refused_not_truncated(tmp_path: Path, checkpoint: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "hostile.pt"
    torch.save({"model_state": {}, "config": Hostile(marker)}, bad)
    with pytest.raises(CheckpointError, match=r"is not a plain checkpoint: it asks to import "
                                              r"\S*system, and loading it was refused"):
        load_model(bad)
    rc = main(["eval", "--checkpoint", str(bad), "--n", "4", "--device", "cpu"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(bad) in line and "truncated" not in line
    assert not marker.exists()


def test_damaged_checkpoints_give_one_line(tmp_path: Path, checkpoint: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello world" * 50)
    for path in (cut, garbage):
        assert main(["eval", "--checkpoint", str(path), "--n", "4", "--device", "cpu"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"checkpoint {path} is truncated or corrupt" in line and "train it again" in line

    state = torch.load(checkpoint, weights_only=True)
    state["model_state"]["features.0.weight"][0, 0, 0, 0] = float("nan")
    diverged = tmp_path / "nan.pt"
    torch.save(state, diverged)
    with pytest.raises(CheckpointError, match=r"nan\.pt holds NaN/inf weights \(\S+\): its "
                                              "training diverged"):
        load_model(diverged)


def test_result_files_of_a_good_write(tmp_path: Path) -> None:
    """The fault tests above do not break the ordinary write."""
    path = write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1} and tmp_files(tmp_path) == []
