"""The failure-case table of issue 16 and its runner: each bad input, the one line it must give.

Each :class:`Case` writes its files into an empty folder, runs one ``robustact`` command (in
this process through :func:`robustact.cli.main`, or in a child process where a real process is
needed: a file-size limit for a full disk, a read-only bind mount in a mount namespace of its
own) or one Python call, and :func:`run_case` classifies what happened:

- ``one-line``: nonzero exit, exactly one stderr line ``error: ...`` matching the pattern;
- ``ok``: a case that must succeed (a repair, a read-only listing) exited 0 and its output
  matches the pattern (and its ``check`` passes); a Python call that reported the bad input
  without raising (NaN logits "not evaluable");
- ``traceback``: an exception escaped, or "Traceback" was printed;
- ``silent``: exit 0 for a bad input, or still working on it after :data:`LIMIT_S` seconds;
- ``other``: any other nonzero exit (a wrong or multi-line message, argparse's usage lines).

``tests/test_failures.py`` asserts every case is handled; ``bench/failures.py`` counts them
(the census, also run against an older source tree). Sizes are tiny: every command trains on
64 images for 1 epoch and attacks 8 points. Paths in argv and file texts use ``{tmp}`` (the
case's folder) and ``{ckpt}`` (a copy of a tiny trained run made once, see
:func:`make_checkpoint`). A case may also name paths that must not exist afterwards (a study
that trained a cell before finding a bad value); a ``.tmp`` file left behind also fails it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

GROUPS = {1: "concurrency / damaged history", 2: "NaN and empty inputs",
          3: "bad values accepted silently", 4: "study files checked up front",
          5: "full or read-only disks", 6: "wrong types", 7: "damaged store or checkpoint",
          8: "misleading messages, fallbacks, stale state"}
KINDS = ("one-line", "ok", "traceback", "silent", "other")
FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Case:
    """One failure case: ``argv`` (a robustact command) or ``call`` (a Python call taking the
    case folder and the checkpoint folder; it returns None when the bad input went through, or
    a string saying how it was reported without raising). ``code`` 0 marks a case that must
    succeed. ``absent``: paths that must not exist afterwards (work done before the error)."""

    id: str
    group: int
    pattern: str
    argv: tuple[str, ...] = ()
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    prepare: Callable[[Path, Path], None] | None = None
    call: Callable[[Path, Path], str | None] | None = None
    process: str | None = None  # "fsize:BYTES": a file-size limit; "readonly:PATH": a read-only
    check: Callable[[Path], str | None] | None = None  # after a success: what is wrong, or None
    code: int = 2
    absent: tuple[str, ...] = ()


LIMIT_S = 60  # a bad input still being worked on after this long was accepted silently


class StillRunning(BaseException):
    """Raised into an in-process case that runs past :data:`LIMIT_S`."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StillRunning` in the main thread after ``seconds``."""
    def stop(signum: int, frame: Any) -> None:
        raise StillRunning

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    kind: str
    code: int | None
    stderr: str
    why: str = ""


# ---- command templates ------------------------------------------------------------------------
TRAIN = ("train", "--model", "small_cnn", "--dataset", "fashion_mnist", "--train-subset", "64",
         "--test-subset", "32", "--epochs", "1", "--batch-size", "32", "--no-progress",
         "--device", "cpu", "--out", "{tmp}/run")
ATTACK = ("attack", "--checkpoint", "{ckpt}", "--suite", "none", "--attacks", "fgsm",
          "--eps", "0.1", "-n", "8", "--no-diagnostics", "--device", "cpu", "--out", "{tmp}/res")
EVAL = ("eval", "--checkpoint", "{ckpt}", "--n", "8", "--device", "cpu")
CONFIG = ("train", "--config", "{tmp}/c.yaml", "--train-subset", "64", "--test-subset", "32",
          "--epochs", "1", "--no-progress", "--device", "cpu", "--out", "{tmp}/run")
GOOD_CONFIG = "model: small_cnn\ndataset: fashion_mnist\nbatch_size: 32\n"
STUDY = """name: s
out: {tmp}/s
train: {model: small_cnn, dataset: fashion_mnist, train_subset: 64, test_subset: 32,
        epochs: 1, batch_size: 32}
cells:
  - {id: relu, activation: relu}
  - {id: bad, activation: relu, %s}
evaluate: {eps: [0.1], n: 8, suite: none, attacks: [fgsm], probe_size: 8%s}
"""
ONE_CELL = STUDY.replace("  - {id: bad, activation: relu, %s}\n", "") % ""
RUN = ("run", "{tmp}/s.yaml")
TRAINED_FIRST = ("s/relu/checkpoint.pt",)  # a bad study value must stop the run before training


def study(cell: str = "lr: 0.01", evaluate: str = "") -> dict[str, str]:
    """A two-cell study file: a good cell first, then ``cell`` options; ``evaluate`` extra."""
    return {"s.yaml": STUDY % (cell, evaluate)}


def train(*extra: str) -> tuple[str, ...]:
    return TRAIN + extra


def attack(*extra: str) -> tuple[str, ...]:
    return ATTACK + extra


def evaluation(*extra: str) -> tuple[str, ...]:
    return EVAL + extra


# ---- Python calls ---------------------------------------------------------------------------
class Linear(nn.Module):
    """A fixed linear classifier on 1x28x28 images; ``nan`` makes its logits NaN."""

    def __init__(self, nan: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(784, 10)
        self.nan = nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.nan else out


def _images(n: int = 4, bad: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 28, 28)
    if bad is not None and n:
        x[0, 0, 3, 3] = bad
    return x, torch.arange(n) % 10


def _attack_call(name: str, x: torch.Tensor, y: torch.Tensor, nan: bool = False) -> str | None:
    from robustact.attacks import create_attack

    result = create_attack(name, eps=0.1)(Linear(nan), x, y)
    if nan and not bool(result.success.any()):
        return "no point of a NaN-logit model counted as a success"
    return None


def _evaluate_call(x: torch.Tensor, y: torch.Tensor, nan: bool = False) -> str | None:
    from robustact.eval.robustness import evaluate

    report = evaluate(Linear(nan), (x, y), ["fgsm"], [0.1], diagnose=False)
    text = repr(report)
    if nan and "not evaluable" in text.lower():
        return "NaN-logit points reported as not evaluable"
    return None


def call_nan_pixel(name: str) -> Callable[[Path, Path], str | None]:
    return lambda tmp, ckpt: _attack_call(name, *_images(bad=float("nan")))


# ---- prepared files -------------------------------------------------------------------------
def _store(tmp: Path) -> Path:
    """A real store of study ``s`` with one done run of cell ``relu``, in ``tmp/s``."""
    from robustact.results.store import ResultsStore

    (tmp / "s").mkdir(exist_ok=True)
    path = tmp / "s" / "results.sqlite"
    ResultsStore(path).record_run("s", "relu", config={"model": "small_cnn"},
                                  config_hash="abc", status="done")
    return path


def garbage_store(tmp: Path, ckpt: Path) -> None:
    (tmp / "s").mkdir()
    (tmp / "s" / "results.sqlite").write_bytes(b"\x00\x13garbage not sqlite\xff" * 300)


def truncated_store(tmp: Path, ckpt: Path) -> None:
    path = _store(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def bad_json_store(tmp: Path, ckpt: Path) -> None:
    path = _store(tmp)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE runs SET config = '{not json'")
        db.commit()


def foreign_store(tmp: Path, ckpt: Path) -> None:
    (tmp / "s").mkdir()
    with contextlib.closing(sqlite3.connect(tmp / "s" / "results.sqlite")) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        db.execute("INSERT INTO invoices (amount) VALUES (9.5)")
        db.commit()


def foreign_file(tmp: Path, ckpt: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp / "other.sqlite")) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        db.commit()


def done_store(tmp: Path, ckpt: Path) -> None:
    _store(tmp)


def readonly_folder(tmp: Path, ckpt: Path) -> None:
    (tmp / "ro").mkdir()


def copy_run(tmp: Path, ckpt: Path) -> Path:
    shutil.copytree(ckpt, tmp / "run")
    return tmp / "run"


def damaged_study(tmp: Path, ckpt: Path) -> None:
    """The one-cell study ``tmp/s.yaml`` run once, then left as two processes at once left
    it: every epoch twice in the cell's metrics.jsonl and no results in the store."""
    code, _, err = run_cli(["run", str(tmp / "s.yaml")])
    if code != 0:
        raise RuntimeError(f"could not run the study to damage: {err}")
    metrics = tmp / "s" / "relu" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("".join(f"{line}\n{line}\n" for line in lines))
    for store in (tmp / "s").glob("results.sqlite*"):
        store.unlink()


def study_repaired(tmp: Path) -> str | None:
    """What is still wrong with the damaged study after a rerun, or None."""
    from robustact.results.store import ResultsStore

    lines = (tmp / "s" / "relu" / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line).get("epoch") for line in lines if line.strip()]
    if len(epochs) != len(set(epochs)):
        return f"metrics.jsonl still holds epochs {epochs}"
    runs = ResultsStore(tmp / "s" / "results.sqlite").runs("s")
    if [(r["cell"], r["status"]) for r in runs] != [("relu", "done")]:
        return f"the store holds {[(r['cell'], r['status']) for r in runs]}, not relu done"
    return None


def garbage_checkpoint(tmp: Path, ckpt: Path) -> None:
    (copy_run(tmp, ckpt) / "checkpoint.pt").write_bytes(os.urandom(3000))


def truncated_checkpoint(tmp: Path, ckpt: Path) -> None:
    path = copy_run(tmp, ckpt) / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:2000])


def empty_checkpoint(tmp: Path, ckpt: Path) -> None:
    torch.save({"foo": 1}, copy_run(tmp, ckpt) / "checkpoint.pt")


class _Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {os.devnull}.pwned",))


def hostile_checkpoint(tmp: Path, ckpt: Path) -> None:
    (copy_run(tmp, ckpt) / "checkpoint.pt").write_bytes(pickle.dumps({"model": _Hostile()}))


def nan_checkpoint(tmp: Path, ckpt: Path) -> None:
    """The tiny run with one weight set to NaN (its logits are NaN)."""
    path = copy_run(tmp, ckpt) / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    for value in _tensors(state):
        if value.is_floating_point() and value.numel() > 1:
            value.view(-1)[0] = float("nan")
    torch.save(state, path)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


def truncated_dataset(tmp: Path, ckpt: Path) -> None:
    """Fashion-MNIST's four files in ``tmp/d``, the training images cut to 10 KB."""
    (tmp / "d").mkdir()
    for src in FASHION.iterdir():
        shutil.copy(src, tmp / "d" / src.name)
    images = tmp / "d" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:10_000])


def damaged_dataset_gzip(tmp: Path, ckpt: Path) -> None:
    """Fashion-MNIST's files in ``tmp/d``, the test labels a valid gzip of too few bytes."""
    truncated_dataset(tmp, ckpt)
    shutil.copy(FASHION / "train-images-idx3-ubyte.gz", tmp / "d")
    (tmp / "d" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01"))


# ---- the table ------------------------------------------------------------------------------
POSITIVE = r"(positive|>= ?1|at least 1|greater than 0|> ?0)"
NONNEG = r"(>= ?0|non-?negative|positive|greater than|at least)"
FINITE = r"(nan|non-?finite|finite|inf)"
EMPTY = r"(empty|no (points|examples|images|inputs)|0 (points|examples|images))"
STORE = r"(damaged|corrupt|malformed|not a (robustact|database|results)|unreadable|invalid|repair)"
RO = r"(read-?only|permission|not writable|cannot write|could not write)"
FULL = r"(no space|disk|full|too large|could not (write|save)|cannot write)"

CASES: list[Case] = [
    # 1: a damaged history in one process (the two-process cases: tests/test_concurrency.py)
    Case("study-duplicate-epochs-rerun", 1, r"relu", RUN, {"s.yaml": ONE_CELL},
         prepare=damaged_study, code=0, check=study_repaired),
    # 2: NaN and empty inputs
    Case("attack-nan-pixel-fgsm", 2, FINITE, call=call_nan_pixel("fgsm")),
    Case("attack-nan-pixel-pgd", 2, FINITE, call=call_nan_pixel("pgd")),
    Case("attack-nan-pixel-square", 2, FINITE, call=call_nan_pixel("square")),
    *(Case(f"attack-nan-pixel-{name}", 2, FINITE, call=call_nan_pixel(name))
      for name in ("apgd_ce", "bim", "mifgsm", "deepfool", "cw", "fab")),
    Case("attack-inf-pixel", 2, FINITE,
         call=lambda t, c: _attack_call("fgsm", *_images(bad=float("inf")))),
    Case("evaluate-nan-pixel", 2, FINITE,
         call=lambda t, c: _evaluate_call(*_images(bad=float("nan")))),
    Case("attack-nan-logits", 2, r"(nan|non-?finite|finite|evaluable)",
         call=lambda t, c: _attack_call("pgd", *_images(), nan=True)),
    Case("evaluate-nan-logits", 2, r"(nan|non-?finite|finite|evaluable)",
         call=lambda t, c: _evaluate_call(*_images(), nan=True)),
    Case("attack-empty-batch", 2, EMPTY, call=lambda t, c: _attack_call("fgsm", *_images(0))),
    Case("attack-empty-batch-pgd", 2, EMPTY, call=lambda t, c: _attack_call("pgd", *_images(0))),
    Case("evaluate-empty-batch", 2, EMPTY, call=lambda t, c: _evaluate_call(*_images(0))),
    Case("cli-attack-nan-weights", 2, r"(nan|non-?finite|finite|evaluable)",
         ATTACK[:2] + ("{tmp}/run",) + ATTACK[3:], prepare=nan_checkpoint),
    Case("cli-attack-n-0", 2, r"\bn\b.*" + POSITIVE, attack("-n", "0")),
    Case("cli-attack-n-negative", 2, r"\bn\b.*" + POSITIVE, attack("-n", "-3")),
    Case("cli-eval-n-0", 2, r"\bn\b.*" + POSITIVE, evaluation("--n", "0")),
    Case("cli-eval-n-negative", 2, r"\bn\b.*" + POSITIVE, evaluation("--n", "-5")),
    # 3: bad values accepted silently
    Case("train-subset-0", 3, r"train.?subset.*" + POSITIVE, train("--train-subset", "0")),
    Case("train-subset-negative", 3, r"train.?subset.*" + POSITIVE,
         train("--train-subset", "-5")),
    Case("test-subset-0", 3, r"test.?subset.*" + POSITIVE, train("--test-subset", "0")),
    Case("train-gamma-negative", 3, r"gamma", train("--schedule", "step", "--gamma", "-1")),
    Case("train-lr-negative", 3, r"\blr\b", train("--lr", "-0.1")),
    Case("train-epochs-0", 3, r"epochs.*" + POSITIVE, train("--epochs", "0")),
    Case("train-batch-size-0", 3, r"batch.?size.*" + POSITIVE, train("--batch-size", "0")),
    Case("train-weight-decay-negative", 3, r"weight.?decay", train("--weight-decay", "-1")),
    Case("train-warmup-negative", 3, r"warmup", train("--warmup-epochs", "-1")),
    Case("train-kwta-ratio-above-1", 3, r"ratio",
         train("--activation", "kwta", "--ratio", "1.5")),
    Case("train-kwta-ratio-0", 3, r"ratio", train("--activation", "kwta", "--ratio", "0")),
    Case("train-adv-eps-negative", 3, r"eps", train("--adv", "fgsm", "--adv-eps", "-0.1")),
    Case("train-adv-fraction-above-1", 3, r"fraction",
         train("--adv", "fgsm", "--adv-eps", "0.1", "--adv-fraction", "1.5")),
    Case("train-sparsity-step-0", 3, r"sparsity.?step",
         train("--activation", "kwta", "--ratio", "0.2", "--sparsity-start", "0.2",
               "--sparsity-target", "0.1", "--sparsity-step", "0")),
    Case("train-adv-steps-0", 3, r"steps",
         train("--adv", "pgd", "--adv-eps", "0.1", "--adv-steps", "0")),
    Case("train-grad-clip-negative", 3, r"grad.?clip", train("--grad-clip", "-1")),
    Case("attack-eps-above-1", 3, r"eps", attack("--eps", "1.5")),
    Case("attack-eps-negative", 3, r"--eps .-0.1. is negative", attack("--eps=-0.1")),
    Case("attack-eps-nan", 3, r"eps", attack("--eps", "nan")),
    Case("attack-eot-0", 3, r"eot", attack("--attack", "pgd:steps=2,eot=0")),
    Case("attack-bpda-abc", 3, r"bpda", attack("--attack", "pgd:steps=2,bpda=abc")),
    Case("attack-steps-0", 3, r"steps", attack("--attack", "pgd:steps=0")),
    Case("attack-samples-0", 3, r"samples.*" + POSITIVE, attack("--samples", "0")),
    Case("attack-probe-size-negative", 3, r"probe.?size", attack("--probe-size", "-1")),
    Case("attack-block-0", 3, r"block.*" + POSITIVE, attack("--block", "0")),
    Case("eval-samples-0", 3, r"samples.*" + POSITIVE, evaluation("--samples", "0")),
    Case("eval-bins-0", 3, r"bins.*" + POSITIVE, evaluation("--bins", "0")),
    Case("eval-sap-frac-above-1", 3, r"(sap|frac)", evaluation("--sap", "1.5")),
    Case("eval-batch-size-0", 3, r"batch.?size.*" + POSITIVE, evaluation("--batch-size", "0")),
    # 4: study files checked before any cell trains
    Case("study-eps-abc", 4, r"eps", RUN, study(evaluate=", eps: abc"), absent=TRAINED_FIRST),
    Case("study-eps-above-1", 4, r"eps", RUN, study(evaluate=", eps: [1.5]"),
         absent=TRAINED_FIRST),
    Case("study-attacks-string", 4, r"attacks", RUN, study(evaluate=", attacks: fgsm"),
         absent=TRAINED_FIRST),
    Case("study-n-many", 4, r"\bn\b", RUN, study(evaluate=", n: many"), absent=TRAINED_FIRST),
    Case("study-n-0", 4, r"\bn\b.*" + POSITIVE, RUN, study(evaluate=", n: 0"),
         absent=TRAINED_FIRST),
    Case("study-cell-n-0", 4, r"bad.*\bn\b", RUN, study("evaluate: {n: 0}"),
         absent=TRAINED_FIRST),
    Case("study-probe-size-negative", 4, r"probe.?size", RUN,
         study(evaluate=", probe_size: -1"), absent=TRAINED_FIRST),
    Case("study-suite-unknown", 4, r"suite", RUN, study(evaluate=", suite: nosuch"),
         absent=TRAINED_FIRST),
    Case("study-attack-option-abc", 4, r"eot", RUN,
         study(evaluate=', attacks: ["pgd:eot=abc"]'), absent=TRAINED_FIRST),
    Case("study-cell-epochs-three", 4, r"bad.*epochs", RUN, study('epochs: "three"'),
         absent=TRAINED_FIRST),
    Case("study-cell-act-kwargs-number", 4, r"bad.*act_kwargs", RUN, study("act_kwargs: 0.2"),
         absent=TRAINED_FIRST),
    Case("study-cell-activation-unknown", 4, r"bad.*(activation|nosuch)", RUN,
         study("activation: nosuch"), absent=TRAINED_FIRST),
    Case("study-cell-lr-negative", 4, r"bad.*\blr\b", RUN, study("lr: -1"),
         absent=TRAINED_FIRST),
    Case("study-cell-unknown-key", 4, r"bad.*colour", RUN, study("colour: red"),
         absent=TRAINED_FIRST),
    Case("study-cell-posthoc-unknown", 4, r"bad.*(posthoc|defense|nosuch)", RUN,
         study("posthoc: {defense: nosuch}"), absent=TRAINED_FIRST),
    Case("study-cell-finetune-missing", 4, r"bad.*(missing|finetune)", RUN,
         study("finetune_from: 'cell:missing'"), absent=TRAINED_FIRST),
    Case("study-cell-train-subset-0", 4, r"bad.*train.?subset", RUN,
         study("train_subset: 0"), absent=TRAINED_FIRST),
    # 5: full and read-only disks
    Case("attack-full-disk", 5, FULL, attack(), process="fsize:200"),
    Case("train-full-disk", 5, FULL, train(), process="fsize:4096"),
    Case("train-read-only-out", 5, RO, TRAIN[:-1] + ("{tmp}/ro/run",), prepare=readonly_folder,
         process="readonly:ro"),
    Case("attack-read-only-out", 5, RO, ATTACK[:-1] + ("{tmp}/ro/res",),
         prepare=readonly_folder, process="readonly:ro"),
    Case("results-list-read-only-store", 5, r"relu", ("results", "list", "{tmp}/s"),
         prepare=done_store, process="readonly:s", code=0),
    Case("run-read-only-study", 5, RO, RUN, study(), prepare=done_store, process="readonly:s"),
    Case("attack-out-under-a-file", 5, r"(not a directory|file|exists)",
         ATTACK[:-1] + ("{tmp}/afile/res",), {"afile": "x"}),
    # 6: wrong types
    Case("config-binary-file", 6, r"c\.yaml", CONFIG, {"c.yaml": bytes(range(256)) * 4}),
    Case("config-yaml-syntax", 6, r"c\.yaml", CONFIG, {"c.yaml": "model: [small_cnn\n"}),
    Case("config-not-a-mapping", 6, r"c\.yaml", CONFIG, {"c.yaml": "- small_cnn\n- relu\n"}),
    Case("config-epochs-three", 6, r"epochs", CONFIG[:7] + CONFIG[9:],
         {"c.yaml": GOOD_CONFIG + "epochs: three\n"}),
    Case("config-act-kwargs-number", 6, r"act_kwargs", CONFIG,
         {"c.yaml": GOOD_CONFIG + "activation: kwta\nact_kwargs: 0.2\n"}),
    Case("config-epochs-fraction", 6, r"epochs", CONFIG[:7] + CONFIG[9:],
         {"c.yaml": GOOD_CONFIG + "epochs: 1.5\n"}),
    Case("attack-loss-unknown", 6, r"(loss|nosuch)",
         attack("--attack", "pgd:steps=2,loss=nosuch")),
    Case("config-unknown-key", 6, r"colour", CONFIG, {"c.yaml": GOOD_CONFIG + "colour: red\n"}),
    Case("config-missing-file", 6, r"(no such|not found|does not exist|missing)",
         CONFIG, {}),
    Case("train-momentum-negative", 6, r"momentum", train("--momentum", "-1")),
    Case("train-step-size-0", 6, r"step.?size", train("--schedule", "step", "--step-size", "0")),
    Case("train-milestones-abc", 6, r"milestones",
         train("--schedule", "multistep", "--milestones", "a,b")),
    Case("train-act-arg-abc", 6, r"(ratio|act.?arg)",
         train("--activation", "kwta", "--act-arg", "ratio=abc")),
    Case("train-model-arg-unknown", 6, r"(nosuch|model.?arg)", train("--model-arg", "nosuch=1")),
    Case("train-out-is-a-file", 6, r"(out|file|directory)",
         TRAIN[:-1] + ("{tmp}/afile",), {"afile": "x"}),
    Case("train-alexnet-svhn-no-resize", 6, r"(resize|224)",
         train("--model", "alexnet", "--dataset", "svhn", "--data-dir", "{tmp}")),
    Case("attack-eot-abc", 6, r"eot", attack("--attack", "pgd:eot=abc")),
    Case("attack-targeted-true-runs", 6, r"pgd", attack("--attack", "pgd:steps=2,targeted=true"),
         code=0),
    Case("attack-option-unknown", 6, r"(nosuch|option)", attack("--attack", "pgd:nosuch=1")),
    Case("attack-name-unknown", 6, r"nosuch", attack("--attack", "nosuch")),
    Case("attack-eps-abc", 6, r"eps", attack("--eps", "abc")),
    Case("attack-eps-division-by-zero", 6, r"eps", attack("--eps", "1/0")),
    Case("eval-defense-unknown", 6, r"nosuch", evaluation("--defense", "nosuch:p=1")),
    # 7: damaged store or checkpoint
    Case("store-garbage-bytes", 7, r"results\.sqlite.*" + STORE,
         ("results", "list", "{tmp}/s"), prepare=garbage_store),
    Case("store-truncated", 7, r"results\.sqlite.*" + STORE, ("results", "list", "{tmp}/s"),
         prepare=truncated_store),
    Case("store-bad-json-column", 7, r"results\.sqlite.*" + STORE,
         ("results", "list", "{tmp}/s"), prepare=bad_json_store),
    Case("store-bad-json-export", 7, r"results\.sqlite.*" + STORE,
         ("results", "export", "{tmp}/s", "--format", "json"), prepare=bad_json_store),
    Case("store-foreign-sqlite-list", 7, r"(foreign|not a robustact|unrelated|invoices)",
         ("results", "list", "{tmp}/s"), prepare=foreign_store),
    Case("store-is-a-directory", 7, r"(director|store)",
         ("results", "list", "{tmp}/s", "--store", "{tmp}"), prepare=garbage_store),
    Case("checkpoint-garbage", 7, r"checkpoint", ("eval", "--checkpoint", "{tmp}/run"),
         prepare=garbage_checkpoint),
    Case("checkpoint-truncated", 7, r"checkpoint", ("eval", "--checkpoint", "{tmp}/run"),
         prepare=truncated_checkpoint),
    Case("checkpoint-without-model", 7, r"checkpoint", ("eval", "--checkpoint", "{tmp}/run"),
         prepare=empty_checkpoint),
    # 8: misleading messages, silent fallbacks, stale state
    Case("train-data-dir-nowhere", 8, r"nowhere", train("--data-dir", "{tmp}/nowhere")),
    Case("eval-data-dir-nowhere", 8, r"nowhere", evaluation("--data-dir", "{tmp}/nowhere")),
    Case("attack-data-dir-nowhere", 8, r"nowhere", attack("--data-dir", "{tmp}/nowhere")),
    Case("data-fetch-truncated", 8, r"(truncat|damaged|corrupt|size|checksum|sha)",
         ("data", "fetch", "fashion_mnist", "--data-dir", "{tmp}/d"), prepare=truncated_dataset),
    Case("data-fetch-short-labels", 8, r"(truncat|damaged|corrupt|size|checksum|sha)",
         ("data", "fetch", "fashion_mnist", "--data-dir", "{tmp}/d"),
         prepare=damaged_dataset_gzip),
    Case("run-into-foreign-sqlite", 8, r"(foreign|not a robustact|unrelated|invoices)",
         RUN + ("--store", "{tmp}/other.sqlite"), study(), prepare=foreign_file,
         absent=TRAINED_FIRST),
    Case("checkpoint-hostile-pickle", 8, r"^(?!.*truncat).*(unsafe|refus|not allowed|untrusted"
         r"|global|pickle|code)", ("eval", "--checkpoint", "{tmp}/run"),
         prepare=hostile_checkpoint),
    Case("checkpoint-nowhere", 8, r"nowhere", ("eval", "--checkpoint", "{tmp}/nowhere")),
    Case("results-list-nowhere", 8, r"nowhere", ("results", "list", "{tmp}/nowhere")),
    Case("run-cell-unknown", 8, r"nosuch", RUN + ("--cell", "nosuch"), study()),
]


# ---- the runner -----------------------------------------------------------------------------
def make_checkpoint(folder: Path) -> Path:
    """A tiny trained run (64 images, 1 epoch) in ``folder/ckpt``, made once and shared."""
    run = folder / "ckpt"
    if not (run / "checkpoint.pt").exists():
        code, _, err = run_cli([a.replace("{tmp}/run", str(run)) for a in TRAIN])
        if code != 0:
            raise RuntimeError(f"could not train the shared checkpoint: {err}")
    return run


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """``robustact ARGV`` in this process: (exit code or None when an exception escaped,
    stdout, stderr with the traceback of an escaped exception)."""
    from robustact.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except StillRunning:
            return 0, out.getvalue() + f"still running after {LIMIT_S} s", err.getvalue()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # an escaped exception is what the census counts
            traceback.print_exc(file=err)
            code = None
    return code, out.getvalue(), err.getvalue()


def run_process(argv: list[str], how: str, cwd: Path) -> tuple[int | None, str, str]:
    """``python -m robustact ARGV`` in a child process, ``how`` being ``fsize:BYTES`` (a
    file-size limit: writes past it fail with EFBIG, as on a full disk) or ``readonly:PATH``
    (``cwd/PATH`` bind-mounted read-only in a mount namespace of its own; without root,
    its modes made read-only, which then bind)."""
    kind, _, arg = how.partition(":")
    command = [sys.executable, "-m", "robustact", *argv]
    preexec = None
    if kind == "fsize":
        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
    elif os.geteuid() == 0:
        folder = str(cwd / arg)
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                   folder, *command]
    else:
        for path in [cwd / arg, *(cwd / arg).rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              preexec_fn=preexec, timeout=LIMIT_S)
    except subprocess.TimeoutExpired as exc:
        return 0, f"still running after {LIMIT_S} s", str(exc.stderr or "")
    return proc.returncode, proc.stdout, proc.stderr


def _write_files(case: Case, tmp: Path) -> None:
    for name, content in case.files.items():
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)))


def _execute(case: Case, tmp: Path, ckpt: Path) -> tuple[int | None, str, str]:
    """Run the case's call or command from ``tmp``: (exit code, stdout, stderr)."""
    if case.call is not None:
        try:
            with time_limit(LIMIT_S):
                said = case.call(tmp, ckpt)
        except StillRunning:
            return 0, f"still running after {LIMIT_S} s", ""
        except Exception as exc:  # noqa: BLE001 - the census classifies every exception
            from robustact.errors import RobustactError

            if isinstance(exc, RobustactError):
                return 2, "", f"error: {exc}\n"
            return None, "", "".join(traceback.format_exception(exc))
        return (0, "", "") if said is None else (3, said, "")
    argv = [a.replace("{tmp}", str(tmp)).replace("{ckpt}", str(ckpt)) for a in case.argv]
    if case.process:
        return run_process(argv, case.process, tmp)
    cwd = Path.cwd()
    os.chdir(tmp)
    try:
        with time_limit(LIMIT_S):
            return run_cli(argv)
    finally:
        os.chdir(cwd)


def run_case(case: Case, tmp: Path, ckpt: Path) -> Outcome:
    """Set the case up in the empty folder ``tmp``, run it and classify the outcome."""
    if any("{ckpt}" in arg for arg in case.argv):  # an attack writes its blocks beside it
        ckpt = Path(shutil.copytree(ckpt, tmp / "ckpt"))
    _write_files(case, tmp)
    if case.prepare is not None:
        case.prepare(tmp, ckpt)
    code, out, err = _execute(case, tmp, ckpt)
    outcome = classify(case, code, out, err)
    if outcome.kind == "ok" and case.check is not None:
        problem = case.check(tmp)
        if problem:
            return Outcome("other", code, err, problem)
    left = [p for p in case.absent if (tmp / p).exists()]
    left += [str(p.relative_to(tmp)) for p in tmp.rglob("*.tmp")]
    if left and outcome.kind in ("one-line", "ok"):
        return Outcome("other", code, err, f"left behind: {', '.join(left)}")
    return outcome


def classify(case: Case, code: int | None, out: str, err: str) -> Outcome:
    """The outcome kind of exit ``code`` with ``out`` and ``err`` (see the module docstring)."""
    lines = [line for line in err.splitlines() if line.strip()]
    if code is None or "Traceback" in err or "Traceback" in out:
        why = next((line for line in reversed(lines) if line.strip()), "")
        return Outcome("traceback", code, err, why[:200])
    if code == 3 and case.call is not None:  # reported without raising (e.g. "not evaluable")
        return Outcome("ok", code, err, out)
    if code == 0:
        if case.code == 0:
            if re.search(case.pattern, out + err, re.IGNORECASE | re.MULTILINE):
                return Outcome("ok", code, err)
            return Outcome("other", code, err, "succeeded without the expected output")
        running = f"still running after {LIMIT_S} s"
        return Outcome("silent", code, err, running if running in out else "exit 0 for a bad input")
    if case.code == 0:
        return Outcome("other", code, err, f"must succeed; {lines[-1][:200] if lines else ''}")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        shown = " | ".join(line[:120] for line in lines[-3:])
        return Outcome("other", code, err, f"{len(lines)} stderr line(s): {shown}")
    if not re.search(case.pattern, lines[0], re.IGNORECASE):
        return Outcome("other", code, err, f"message does not match: {lines[0][:200]}")
    if code != case.code:
        return Outcome("other", code, err, f"exit {code}, expected {case.code}")
    return Outcome("one-line", code, err, lines[0][:200])
