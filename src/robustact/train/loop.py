"""The one training loop. Everything that varies between experiments is in :class:`TrainConfig`."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
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
from robustact.errors import CheckpointError, ConfigError
from robustact.eval.accuracy import evaluate_accuracy
from robustact.train.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    build_model,
    load_checkpoint,
    save_atomic,
)
from robustact.train.config import TrainConfig
from robustact.train.distributed import DistContext, init_distributed
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
    """
    ctx, device = init_distributed(config.device)
    try:
        return _train(config, resume, log if ctx.is_main else (lambda _: None), ctx, device)
    finally:
        ctx.close()


def _train(config: TrainConfig, resume: bool, log: Any, ctx: DistContext,
           device: torch.device) -> TrainResult:
    from robustact.data import BatchLoader, load_dataset

    use_amp = config.amp if config.amp is not None else device.type == "cuda"
    dtype = amp_dtype(device) if use_amp else None
    if use_amp and dtype is None:
        raise ConfigError(f"mixed precision (amp) is supported on CUDA only, not on {device.type}")
    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME
    torch.manual_seed(config.seed)

    train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    if config.train_subset:
        train_set = train_set.subset(config.train_subset)
    if config.test_subset:
        test_set = test_set.subset(config.test_subset)
    adv = config.adversarial
    guard_set = None
    if adv is not None and adv.guard:
        if len(train_set) <= 2 * adv.guard_size:
            raise ConfigError(
                f"the overfitting guard holds out {adv.guard_size} training images but the "
                f"training set has only {len(train_set)}; lower adversarial.guard_size "
                "or set adversarial.guard: false"
            )
        keep = len(train_set) - adv.guard_size  # the last guard_size images are held out
        guard_set = train_set.subset(torch.arange(keep, len(train_set)))
        train_set = train_set.subset(keep)
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {config.batch_size} does not split evenly over "
                          f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    train_loader = BatchLoader(train_set, batch_size=config.batch_size // ctx.world_size,
                               shuffle=True, augment=config.augment, seed=config.seed,
                               device=device, resize=config.resize, rank=ctx.rank,
                               world_size=ctx.world_size)
    test_loader = BatchLoader(test_set, batch_size=max(256, config.batch_size), device=device,
                              resize=config.resize)

    model = build_trainable(config, device, lambda: next(iter(test_loader))[0][:2])
    optimizer = make_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is not None)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    resumed_from = None
    guard = None
    if guard_set is not None:  # the held-out images as one batch, as the test loader sees them
        x_guard, y_guard = next(iter(BatchLoader(guard_set, batch_size=len(guard_set),
                                                 device=device, resize=config.resize)))
        guard = _Guard(adv, x_guard, y_guard)
    train_attack = adv.attack() if adv is not None else None
    if ckpt_path.exists():
        if not resume:
            raise ConfigError(
                f"{out} already holds a checkpoint; pass --resume to continue it "
                "or use another --out"
            )
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt.get("config_hash") != config.hash():
            raise ConfigError(
                f"the checkpoint in {out} was trained with a different configuration; "
                "resume with the same options or use another --out"
            )
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scaler.load_state_dict(ckpt["scaler_state"])
        _set_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        start_epoch = resumed_from = ckpt["epoch"] + 1
        if guard is not None and ckpt.get("guard"):
            guard.load_state_dict(ckpt["guard"])
        if ckpt.get("stopped_early"):
            start_epoch = config.epochs
            log(f"{out} stopped early after epoch {ckpt['epoch'] + 1} (overfitting guard); "
                "nothing to resume")
        else:
            log(f"resuming {out} after epoch {ckpt['epoch'] + 1}/{config.epochs}")

    metrics_path = out / config.metrics_file
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        write_metrics(metrics_path, history)
    trained = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, config.epochs):
        row = _run_epoch(config, trained, optimizer, scaler, train_loader, test_loader,
                         epoch, device, dtype, train_attack, ctx)
        stop = False
        if guard is not None:
            row["guard_pgd_acc"], message = guard.check(model, epoch)
            stop = message is not None
            if stop:
                log(message)
                row["kept_epoch"] = guard.best_epoch
                row["kept_test_acc"] = round(
                    evaluate_accuracy(model, test_loader, amp=dtype is not None)["accuracy"], 6)
        history.append(row)
        state = {
            "format": FORMAT_VERSION,
            "config": config.to_dict(),
            "config_hash": config.hash(),
            "epoch": epoch,
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "scaler_state": scaler.state_dict(),
            "rng": _get_rng_state(),
            "history": history,
            "versions": {"torch": str(torch.__version__), "robustact": _version()},
        }
        if guard is not None:
            state["guard"] = guard.state_dict()
        if stop:
            state["stopped_early"] = epoch + 1
        if ctx.is_main:
            save_atomic(state, ckpt_path)
            append_metrics(metrics_path, row, first=(epoch == 0))
        ctx.barrier()  # no process runs ahead of the checkpoint
        log(_format_row(row, config.epochs))
        if stop:
            break

    result = TrainResult(out, ckpt_path, history, model.eval(), resumed_from)
    if ctx.is_main:
        (out / "summary.json").write_text(json.dumps(
            {"config_hash": config.hash(), "epochs": config.epochs, "final": history[-1],
             "world_size": ctx.world_size}, indent=2
        ))
    return result


def _run_epoch(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    train_loader: Any,
    test_loader: Any,
    epoch: int,
    device: torch.device,
    dtype: torch.dtype | None,
    attack: Any = None,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    ctx = ctx or DistContext()
    net = getattr(model, "module", model)  # the model itself, outside DistributedDataParallel
    if config.sparsity is not None:
        set_kwta_ratio(model, config.sparsity.ratio(epoch))
    model.train()
    train_loader.set_epoch(epoch)
    steps = len(train_loader)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = _progress(train_loader, config, epoch)
    start = time.perf_counter()
    lr = config.lr
    for i, (x, y) in enumerate(bar):
        lr = lr_at(config, epoch + i / steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if attack is not None:
                x = _adversarial_batch(attack, net, x, y, config.adversarial.fraction)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        # on CPU the check is free; on GPUs it would be a host sync every step
        if device.type == "cpu" and not torch.isfinite(loss):
            raise ConfigError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                              "lower --lr or set --grad-clip")
        optimizer_step(config, model, optimizer, scaler, loss)
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if hasattr(bar, "set_postfix") and (i % 25 == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", lr=f"{lr:.3g}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    ctx.sync_state(net)  # identical weights and BatchNorm statistics everywhere
    stats = ctx.sum(torch.stack([loss_sum.double(), correct.double(),
                                 torch.tensor(float(seen), device=device, dtype=torch.float64)]))
    loss_sum, correct, seen = stats[0], stats[1], int(stats[2].item())
    test = evaluate_accuracy(net, test_loader, amp=dtype is not None)
    ratios = kwta_ratios(net)
    return {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum.item() / max(seen, 1), 6),
        "train_acc": round(correct.item() / max(seen, 1), 6),
        "test_loss": round(test["loss"], 6),
        "test_acc": round(test["accuracy"], 6),
        "lr": lr,
        "ratio": ratios[0] if ratios else None,
        "images_per_s": round(seen / seconds, 1),  # all processes together
        "seconds": round(seconds, 3),
    }


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
