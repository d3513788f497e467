"""The GPU check (not a test): one table of k-WTA, PGD, AMP training and sharded evaluation.

    bash bench/gpu.sh                    # on a machine with a GPU: under 8 minutes on one
    bash bench/gpu.sh --device cpu --quick    # the same code path on a CPU, in seconds

Rows, each measured side by side (interleaved) on ``--device``, median of ``--repeats``:

- ``kwta``: forward+backward of robustact's k-WTA, the original code's topk-repeat and ReLU
  on ResNet18's activation shapes (batch 128); ratio = topk-repeat / k-WTA.
- ``pgd``: PGD-20 (8/255, step 2/255) images/s of robustact and torchattacks on ResNet18 at
  batch 256; ratio = torchattacks' time / robustact's (torchattacks missing: not measured).
- ``amp``: one training step (SGD, autocast where robustact uses it) of ResNet18,
  PreActResNet18 and ResNet20 on CIFAR-shaped random data, batch 128; images/s.
- ``sharded``: ``robustact attack`` (PGD-20, 2000 points) of a ResNet18 trained briefly on a
  random CIFAR-10-format folder, in 1 process and in one process per GPU (2 on a CPU), both
  through torchrun: wall seconds and whether the per-example outcomes are identical.

``--quick`` shrinks every size (ResNet20 for the PGD and sharded rows) to check the code
path on a CPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _results import setup, write_result
from robustact.activations import KWTA
from robustact.attacks import PGD
from robustact.device import amp_dtype, select_device
from robustact.distributed import local_torchrun
from robustact.models import create_model

RESNET18_SHAPES = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
Row = dict[str, object]


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeats`` times after ``warmup``."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            seconds = timed(fn, device)
            if r >= warmup:
                times[name].append(seconds)
    return {k: statistics.median(v) for k, v in times.items()}


def topk_repeat(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """The original k-WTA code's formulation (the authors' README)."""
    flat = x.view(x.shape[0], -1)
    k = int(ratio * flat.shape[1])
    top = flat.topk(k, dim=1)[0][:, -1]
    top = top.repeat(flat.shape[1], 1).permute(1, 0).view_as(x)
    return (x >= top).to(x) * x


def kwta_rows(device: torch.device, batch: int, repeats: int) -> list[Row]:
    rows = []
    for shape in RESNET18_SHAPES:
        x0 = torch.randn(batch, *shape, device=device)
        grad = torch.randn_like(x0)
        layer = KWTA(0.1)

        def run(fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor = x0,
                grad: torch.Tensor = grad) -> Callable[[], object]:
            return lambda: fn(x0.detach().requires_grad_()).backward(grad)

        med = interleaved({"kwta": run(layer), "topk": run(lambda t: topk_repeat(t, 0.1)),
                           "relu": run(torch.relu)}, device, repeats)
        rows.append({"check": "kwta", "case": "x".join(map(str, shape)),
                     "robustact": f"{med['kwta'] * 1e3:.2f} ms",
                     "reference": f"topk {med['topk'] * 1e3:.2f} / relu {med['relu'] * 1e3:.2f}",
                     "ratio": med["topk"] / med["kwta"]})
    return rows


def pgd_rows(device: torch.device, arch: str, batch: int, steps: int,
             repeats: int) -> list[Row]:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    fns: dict[str, Callable[[], object]] = {
        "robustact": lambda: PGD(eps=8 / 255, step_size=2 / 255, steps=steps)(model, x, y)}
    try:
        import torchattacks

        theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=steps)
        fns["torchattacks"] = lambda: theirs(x, y)
    except ImportError:
        pass
    med = interleaved(fns, device, repeats)
    ref = med.get("torchattacks")
    return [{"check": "pgd", "case": f"{arch} PGD-{steps} b{batch}",
             "robustact": f"{batch / med['robustact']:.0f} img/s",
             "reference": f"torchattacks {batch / ref:.0f} img/s" if ref else "not installed",
             "ratio": ref / med["robustact"] if ref else float("nan")}]


def amp_rows(device: torch.device, batch: int, repeats: int) -> list[Row]:
    rows = []
    dtype = amp_dtype(device)
    for name in ("resnet18", "preact_resnet18", "resnet20"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=10).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt,
                 scaler: torch.amp.GradScaler = scaler, x: torch.Tensor = x,
                 y: torch.Tensor = y) -> None:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        med = interleaved({"step": step}, device, repeats, warmup=2)
        rows.append({"check": "amp", "case": f"{name} train step b{batch}",
                     "robustact": f"{batch / med['step']:.0f} img/s",
                     "reference": f"autocast {dtype}".replace("torch.", ""),
                     "ratio": float("nan")})
    return rows


def _attack(args: argparse.Namespace, ckpt: Path, procs: int, out: Path) -> tuple[float, list]:
    attack = ["attack", "--checkpoint", str(ckpt), "--suite", "none", "--attacks",
              f"pgd:steps={args.pgd_steps}", "--eps", "8/255", "-n", str(args.shard_n),
              "--block", str(max(args.shard_n // 8, 1)), "--device", args.device,
              "--no-diagnostics", "--out", str(out)]
    launcher = [*local_torchrun(procs), "robustact"]
    start = time.perf_counter()
    subprocess.run(launcher + attack, check=True, env=_env(), stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    record = json.loads(out.with_suffix(".json").read_text())
    return seconds, [record["clean_correct"]] + [a["correct"] for a in record["attacks"]]


def random_cifar(root: Path, n_test: int, n_train: int = 64) -> Path:
    """A CIFAR-10 folder in the official format (``cifar-10-batches-py``) of random images:
    CIFAR-10 itself may not be downloadable where this runs."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        batch = {b"batch_label": b"random", b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [b"r%d.png" % i for i in range(n)]}
        # the official files were written by numpy 1, whose pickles name numpy.core
        raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
        (folder / name).write_bytes(raw)
    meta = {b"label_names": [b"c%d" % i for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def sharded_rows(args: argparse.Namespace, device: torch.device) -> list[Row]:
    procs = torch.cuda.device_count() if device.type == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        data = random_cifar(Path(tmp) / "data", args.shard_n)
        ckpt = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "robustact", "train", "--model", args.arch,
                        "--dataset", "cifar10", "--data-dir", str(data), "--epochs", "1",
                        "--batch-size", "32", "--device", args.device, "--no-progress",
                        "--out", str(ckpt)], check=True, stdout=subprocess.DEVNULL,
                       env=_env())
        one, base = _attack(args, ckpt, 1, Path(tmp) / "one")
        many, result = _attack(args, ckpt, procs, Path(tmp) / "many")
    return [{"check": "sharded", "case": f"PGD-{args.pgd_steps} n{args.shard_n}, 1 vs {procs} "
             "processes", "robustact": f"{one:.1f} s / {many:.1f} s",
             "reference": f"identical: {result == base}", "ratio": one / many}]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check on a CPU)")
    parser.add_argument("--json", default="bench/results/gpu.json")
    args = parser.parse_args()
    setup()
    device = select_device(args.device)
    quick = args.quick
    repeats, batch = (1, 4) if quick else (10, 128)
    args.pgd_steps, args.shard_n = (2, 16) if quick else (20, 2000)
    args.arch = "resnet20" if quick else "resnet18"  # of the PGD and sharded rows
    rows = (kwta_rows(device, batch, repeats)
            + pgd_rows(device, args.arch, 16 if quick else 256, args.pgd_steps, repeats)
            + amp_rows(device, batch, repeats) + sharded_rows(args, device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"GPU check on {name} (torch {torch.__version__}){' --quick' if quick else ''}")
    print(f"{'check':<8} {'case':<34} {'robustact':>20}  {'reference':<34} {'ratio':>6}")
    for r in rows:
        print(f"{r['check']:<8} {r['case']:<34} {r['robustact']:>20}  {r['reference']:<34} "
              f"{r['ratio']:>6.2f}")
    write_result(args.json, {"device": name, "quick": quick, "rows": rows})


if __name__ == "__main__":
    main()
