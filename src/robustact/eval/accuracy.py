"""Clean accuracy of a model over a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from robustact.device import amp_dtype


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy loss and top-1 accuracy (a fraction in [0, 1]) of ``model``.

    The model is put in eval mode and its previous mode restored. Sums stay on the device and are
    read once at the end (no per-batch host sync).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dtype = amp_dtype(device) if amp else None
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="eval", leave=False, unit="batch", disable=None)
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "n": 0}
    return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n, "n": n}
