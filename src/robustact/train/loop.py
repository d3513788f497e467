"""Run the one training loop: set-up, resume, epochs, guard, checkpoints; options in TrainConfig."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parameter import is_lazy

from robustact.activations.kaf import initialize_lazy
from robustact.activations.kwta import kwta_ratios, set_kwta_ratio
from robustact.device import amp_dtype
from robustact.distributed import DistContext, init_distributed
from robustact.errors import CheckpointError, ConfigError
from robustact.eval.accuracy import evaluate_accuracy
from robustact.locks import hold, is_held
from robustact.train.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    build_model,
    load_checkpoint,
    save_atomic,
)
from robustact.train.config import TrainConfig
from robustact.train.metrics import append_metrics, write_metrics
from robustact.train.schedules import lr_at


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None
    resumed_from_epoch: int | None = None

    @property
    def test_accuracy(self) -> float:
        """Test accuracy of the returned weights (the kept epoch's after an early stop)."""
        if not self.history:
            return math.nan
        last = self.history[-1]
        return last.get("kept_test_acc", last["test_acc"])


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )


def build_trainable(config: TrainConfig, device: torch.device,
                    example: Callable[[], torch.Tensor]) -> nn.Module:
    """``config``'s network on ``device``, ready for its optimizer: lazy parameters (KAF)
    created from ``example()`` (a small input batch, asked for only when needed), the
    ``finetune_from`` weights loaded."""
    model = build_model(config.to_dict()).to(device)
    if any(is_lazy(p) for p in model.parameters()):  # e.g. KAF: shapes from a real batch
        initialize_lazy(model, example())
    if config.finetune_from:
        _load_finetune_weights(model, config)
    return model


def train(config: TrainConfig, *, resume: bool = False, log: Any = print) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; checkpoint every epoch into ``config.out``.

    With ``resume``, a run whose ``checkpoint.pt`` exists continues after its last finished
    epoch and ends with the same weights as an uninterrupted run (same seed, same device).
    Under ``torchrun`` the processes train one model data-parallel (see
    :mod:`robustact.train.distributed`); rank 0 writes the files.

    One process at a time trains into ``config.out`` (rank 0 holds the OS lock
    ``<out>/.train.lock``); another waits for it, then resumes what it left, or reuses it
    when it finished (no epoch is run or written twice).
    """
    ctx, device = init_distributed(config.device)
    quiet = log if ctx.is_main else (lambda _: None)
    try:
        with _run_lock(config, ctx, quiet) as waited:
            return _train(config, resume or waited or _finished(config), quiet, ctx, device)
    finally:
        ctx.close()


RUN_LOCK = ".train.lock"


@contextlib.contextmanager
def _run_lock(config: TrainConfig, ctx: DistContext, log: Any) -> Iterator[bool]:
    """Hold the training run's lock (rank 0); yields whether another process held it first."""
    if not ctx.is_main:
        yield False
        return
    path = Path(config.out) / RUN_LOCK
    waited = is_held(path)
    with hold(path, f"training run {config.out}", wait=True, log=log):
        yield waited


def _finished(config: TrainConfig) -> bool:
    """Whether ``config.out`` holds a finished run of this very configuration (reused)."""
    out = Path(config.out)
    summary = out / "summary.json"
    if not (out / CHECKPOINT_NAME).is_file() or not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("config_hash") == config.hash()
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class _Run:
    """One training run's pieces, built by :func:`_set_up` and carried through its epochs."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    dtype: torch.dtype | None
    log: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: Any
    test_loader: Any
    guard: _Guard | None
    attack: Any
    trained: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    resumed_from: int | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.out / self.config.metrics_file


def _train(config: TrainConfig, resume: bool, log: Any, ctx: DistContext,
           device: torch.device) -> TrainResult:
    """Set up and resume; then each epoch: train, guard check, checkpoint, log line. DDP wraps
    the model after resuming, so that it broadcasts the resumed weights."""
    run = _set_up(config, log, ctx, device)
    _resume(run, resume)
    _start_files(run)
    run.trained = _data_parallel(run.model, ctx, device)
    for epoch in range(run.start_epoch, config.epochs):
        row = _run_epoch(run, epoch)
        stop = _guard_epoch(run, row, epoch)
        run.history.append(row)
        _save_epoch(run, row, epoch, stop)
        log(_format_row(row, config.epochs))
        if stop:
            break
    return _finish(run)


# --- set-up ----------------------------------------------------------------------------------


def _set_up(config: TrainConfig, log: Any, ctx: DistContext, device: torch.device) -> _Run:
    """Seed, data, model, optimizer, AMP scaler, guard and attack, in this (RNG) order."""
    dtype = autocast_dtype(config, device)
    torch.manual_seed(config.seed)
    train_set, test_set, guard_set = _datasets(config)
    train_loader, test_loader = _loaders(config, ctx, device, train_set, test_set)
    model = build_trainable(config, device, lambda: next(iter(test_loader))[0][:2])
    optimizer = make_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is not None)
    guard = _make_guard(config, guard_set, device)
    attack = config.adversarial.attack() if config.adversarial is not None else None
    return _Run(config, ctx, device, dtype, log, model, optimizer, scaler, train_loader,
                test_loader, guard, attack)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None without mixed precision (``config.amp`` None: CUDA only)."""
    use_amp = config.amp if config.amp is not None else device.type == "cuda"
    dtype = amp_dtype(device) if use_amp else None
    if use_amp and dtype is None:
        raise ConfigError(f"mixed precision (amp) is supported on CUDA only, not on {device.type}")
    return dtype


def _datasets(config: TrainConfig) -> tuple[Any, Any, Any]:
    """The training, test and guard (held-out training images, or None) sets."""
    from robustact.data import load_dataset

    train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    if config.train_subset:
        train_set = train_set.subset(config.train_subset)
    if config.test_subset:
        test_set = test_set.subset(config.test_subset)
    adv = config.adversarial
    if adv is None or not adv.guard:
        return train_set, test_set, None
    if len(train_set) <= 2 * adv.guard_size:
        raise ConfigError(
            f"the overfitting guard holds out {adv.guard_size} training images but the "
            f"training set has only {len(train_set)}; lower adversarial.guard_size "
            "or set adversarial.guard: false"
        )
    keep = len(train_set) - adv.guard_size  # the last guard_size images are held out
    guard_set = train_set.subset(torch.arange(keep, len(train_set)))
    return train_set.subset(keep), test_set, guard_set


def _loaders(config: TrainConfig, ctx: DistContext, device: torch.device, train_set: Any,
             test_set: Any) -> tuple[Any, Any]:
    """The shuffled, augmented training loader (this process's shard) and the test loader."""
    from robustact.data import BatchLoader

    if config.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {config.batch_size} does not split evenly over "
                          f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    train_loader = BatchLoader(train_set, batch_size=config.batch_size // ctx.world_size,
                               shuffle=True, augment=config.augment, seed=config.seed,
                               device=device, resize=config.resize, rank=ctx.rank,
                               world_size=ctx.world_size)
    test_loader = BatchLoader(test_set, batch_size=max(256, config.batch_size), device=device,
                              resize=config.resize)
    return train_loader, test_loader


def _make_guard(config: TrainConfig, guard_set: Any, device: torch.device) -> _Guard | None:
    """The overfitting guard on the held-out images as one batch, as the test loader sees them."""
    from robustact.data import BatchLoader

    if guard_set is None:
        return None
    x_guard, y_guard = next(iter(BatchLoader(guard_set, batch_size=len(guard_set),
                                             device=device, resize=config.resize)))
    return _Guard(config.adversarial, x_guard, y_guard)


def _data_parallel(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, else ``model`` itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


# --- resume and files ------------------------------------------------------------------------


def _resume(run: _Run, resume: bool) -> None:
    """Load ``run``'s checkpoint, if there is one, into its model, optimizer, scaler, RNG and
    guard; refuse one without ``resume`` or from another configuration."""
    config, out = run.config, run.out
    if not run.ckpt_path.exists():
        return
    if not resume:
        raise ConfigError(
            f"{out} already holds a checkpoint; pass --resume to continue it "
            "or use another --out"
        )
    ckpt = load_checkpoint(run.ckpt_path, map_location=run.device)
    if ckpt.get("config_hash") != config.hash():
        raise ConfigError(
            f"the checkpoint in {out} was trained with a different configuration; "
            "resume with the same options or use another --out"
        )
    run.model.load_state_dict(ckpt["model_state"])
    run.optimizer.load_state_dict(ckpt["optimizer_state"])
    run.scaler.load_state_dict(ckpt["scaler_state"])
    _set_rng_state(ckpt["rng"])
    run.history = list(ckpt["history"])
    run.start_epoch = run.resumed_from = ckpt["epoch"] + 1
    if run.guard is not None and ckpt.get("guard"):
        run.guard.load_state_dict(ckpt["guard"])
    if ckpt.get("stopped_early"):
        run.start_epoch = config.epochs
        run.log(f"{out} stopped early after epoch {ckpt['epoch'] + 1} (overfitting guard); "
                "nothing to resume")
    elif run.start_epoch >= config.epochs:
        run.log(f"{out} finished earlier (all {config.epochs} epochs); reusing it")
    else:
        run.log(f"resuming {out} after epoch {ckpt['epoch'] + 1}/{config.epochs}")


def _start_files(run: _Run) -> None:
    """Rank 0: the output folder, its ``config.yaml`` and the metrics of the epochs so far."""
    if run.ctx.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.yaml").write_text(yaml.safe_dump(run.config.to_dict(),
                                                            sort_keys=False))
        write_metrics(run.metrics_path, run.history)


def _save_epoch(run: _Run, row: dict[str, Any], epoch: int, stop: bool) -> None:
    """Rank 0: the checkpoint after ``epoch`` and its metrics row; then every process waits."""
    if run.ctx.is_main:
        save_atomic(_checkpoint_state(run, epoch, stop), run.ckpt_path)
        append_metrics(run.metrics_path, row, first=(epoch == 0))
    run.ctx.barrier()  # no process runs ahead of the checkpoint


def _checkpoint_state(run: _Run, epoch: int, stop: bool) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds after ``epoch``: enough to resume bit-identically."""
    config = run.config
    state = {
        "format": FORMAT_VERSION,
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "epoch": epoch,
        "model_state": run.model.state_dict(),
        "optimizer_state": run.optimizer.state_dict(),
        "scaler_state": run.scaler.state_dict(),
        "rng": _get_rng_state(),
        "history": run.history,
        "versions": {"torch": str(torch.__version__), "robustact": _version()},
    }
    if run.guard is not None:
        state["guard"] = run.guard.state_dict()
    if stop:
        state["stopped_early"] = epoch + 1
    return state


def _finish(run: _Run) -> TrainResult:
    """The result (the model in eval mode); rank 0 writes ``summary.json``."""
    result = TrainResult(run.out, run.ckpt_path, run.history, run.model.eval(), run.resumed_from)
    if run.ctx.is_main:
        (run.out / "summary.json").write_text(json.dumps(
            {"config_hash": run.config.hash(), "epochs": run.config.epochs,
             "final": run.history[-1], "world_size": run.ctx.world_size}, indent=2
        ))
    return result


# --- one epoch -------------------------------------------------------------------------------


@dataclass
class _Tally:
    """An epoch's running training loss sum, correct count, images seen and last learning
    rate; the sums stay on the device (no host sync per step)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    lr: float
    seen: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * y.shape[0]
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += y.shape[0]


def _run_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train ``epoch`` (0-based) on every batch, then test: the epoch's metrics row."""
    config, device, trained = run.config, run.device, run.trained
    assert trained is not None
    if config.sparsity is not None:
        set_kwta_ratio(trained, config.sparsity.ratio(epoch))
    trained.train()
    run.train_loader.set_epoch(epoch)
    tally = _Tally(torch.zeros((), device=device),
                   torch.zeros((), device=device, dtype=torch.int64), config.lr)
    bar = _progress(run.train_loader, config, epoch)
    start = time.perf_counter()
    _train_steps(run, bar, epoch, tally)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    run.ctx.sync_state(run.model)  # identical weights and BatchNorm statistics everywhere
    return _epoch_row(run, tally, epoch, seconds)


def _train_steps(run: _Run, bar: Any, epoch: int, tally: _Tally) -> None:
    """One optimizer step per batch of ``bar``, the learning rate set from the schedule."""
    config = run.config
    steps = len(run.train_loader)
    for i, (x, y) in enumerate(bar):
        tally.lr = lr_at(config, epoch + i / steps)
        for group in run.optimizer.param_groups:
            group["lr"] = tally.lr
        logits, loss = _forward(run, x, y)
        # on CPU the check is free; on GPUs it would be a host sync every step
        if run.device.type == "cpu" and not torch.isfinite(loss):
            raise ConfigError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                              "lower --lr or set --grad-clip")
        optimizer_step(config, run.trained, run.optimizer, run.scaler, loss)
        tally.add(loss, logits, y)
        if hasattr(bar, "set_postfix") and (i % 25 == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{tally.loss_sum.item() / tally.seen:.3f}",
                            lr=f"{tally.lr:.3g}")


def _forward(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and cross-entropy loss of the batch (adversarial share first), under autocast."""
    with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype is not None):
        if run.attack is not None:
            x = _adversarial_batch(run.attack, run.model, x, y, run.config.adversarial.fraction)
        logits = run.trained(x)
        return logits, F.cross_entropy(logits, y)


def _epoch_row(run: _Run, tally: _Tally, epoch: int, seconds: float) -> dict[str, Any]:
    """The metrics row of ``epoch``: training totals over all processes, test accuracy."""
    device = run.device
    stats = run.ctx.sum(torch.stack([tally.loss_sum.double(), tally.correct.double(),
                                     torch.tensor(float(tally.seen), device=device,
                                                  dtype=torch.float64)]))
    loss_sum, correct, seen = stats[0], stats[1], int(stats[2].item())
    test = evaluate_accuracy(run.model, run.test_loader, amp=run.dtype is not None)
    ratios = kwta_ratios(run.model)
    return {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum.item() / max(seen, 1), 6),
        "train_acc": round(correct.item() / max(seen, 1), 6),
        "test_loss": round(test["loss"], 6),
        "test_acc": round(test["accuracy"], 6),
        "lr": tally.lr,
        "ratio": ratios[0] if ratios else None,
        "images_per_s": round(seen / seconds, 1),  # all processes together
        "seconds": round(seconds, 3),
    }


def _guard_epoch(run: _Run, row: dict[str, Any], epoch: int) -> bool:
    """Guard check after ``epoch``, recorded in ``row``; True when training must stop (the best
    epoch's weights are then back in the model and ``row`` says which and how they test)."""
    guard = run.guard
    if guard is None:
        return False
    row["guard_pgd_acc"], message = guard.check(run.model, epoch)
    if message is None:
        return False
    run.log(message)
    row["kept_epoch"] = guard.best_epoch
    row["kept_test_acc"] = round(
        evaluate_accuracy(run.model, run.test_loader, amp=run.dtype is not None)["accuracy"], 6)
    return True


def optimizer_step(config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    """Backward (scaled under AMP), gradient clipping if configured, one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _adversarial_batch(attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       fraction: float) -> torch.Tensor:
    """The batch with its first ``round(fraction * B)`` examples replaced by adversarial ones
    (at least two: they are crafted in training mode, where BatchNorm needs more than one
    example). Batches are shuffled, so these are a random share of the data."""
    n_adv = max(2, round(fraction * x.shape[0]))
    if n_adv >= x.shape[0]:
        return attack.perturb(model, x, y)
    return torch.cat([attack.perturb(model, x[:n_adv], y[:n_adv]), x[n_adv:]])


class _Guard:
    """Catastrophic-overfitting guard of adversarial training: PGD accuracy on held-out
    training images after each epoch; remembers the best epoch's weights."""

    def __init__(self, adv: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        self.attack = adv.guard_attack()
        self.drop = adv.guard_drop
        self.x, self.y = x, y
        self.best_acc = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def check(self, model: nn.Module, epoch: int) -> tuple[float, str | None]:
        """PGD accuracy after ``epoch`` (0-based), and a message when training must stop; then
        the best epoch's weights are already back in ``model``."""
        acc = self.attack(model, self.x, self.y).robust_accuracy
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch + 1
            # tensors and extra state (k-WTA's ratio, KAF's settings) alike
            self.best_state = copy.deepcopy(model.state_dict())
            return round(acc, 6), None
        if acc >= self.best_acc - self.drop or self.best_state is None:
            return round(acc, 6), None
        model.load_state_dict(self.best_state)
        return round(acc, 6), (
            f"catastrophic overfitting after epoch {epoch + 1}: PGD-{self.attack.steps} accuracy "
            f"on {len(self.y)} held-out training images fell to {100 * acc:.1f}% from "
            f"{100 * self.best_acc:.1f}% (epoch {self.best_epoch}); stopping and keeping the "
            f"weights of epoch {self.best_epoch}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_acc = state["best_acc"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]


def _progress(loader: Any, config: TrainConfig, epoch: int) -> Any:
    if not config.progress:
        return loader
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, files)
    return tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                disable=None,
                dynamic_ncols=True)


def _format_row(row: dict[str, Any], epochs: int) -> str:
    ratio = f"  ratio {row['ratio']:.3f}" if row["ratio"] is not None else ""
    guard = (f"  guard PGD {100 * row['guard_pgd_acc']:.1f}%"
             if row.get("guard_pgd_acc") is not None else "")
    return (
        f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train {100 * row['train_acc']:.2f}%  test {100 * row['test_acc']:.2f}%  "
        f"lr {row['lr']:.4g}{ratio}{guard}  {row['images_per_s']:.0f} img/s"
    )


def _load_finetune_weights(model: nn.Module, config: TrainConfig) -> None:
    """Start from another run's weights; the activation's own settings come from ``config``."""
    ckpt = load_checkpoint(config.finetune_from)
    missing, unexpected = model.load_state_dict(ckpt["model_state"], strict=False)
    # k-WTA keeps its ratio as extra state: a ReLU source has none, and the new ratio wins anyway
    bad = [k for k in list(missing) + list(unexpected) if not k.endswith("_extra_state")]
    if bad:
        raise CheckpointError(
            f"{config.finetune_from} does not fit model {config.model!r}: "
            f"mismatched keys {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}"
        )
    ratio = config.act_kwargs.get("ratio")
    if config.sparsity is not None:
        ratio = config.sparsity.ratio(0)
    if ratio is not None:
        set_kwta_ratio(model, ratio)


def _get_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _version() -> str:
    from robustact import __version__

    return __version__
