"""Saving checkpoints atomically: a run killed mid-write keeps its previous checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robustact.files import atomic_path
from robustact.models.checkpoint import (
    CHECKPOINT_NAME,
    build_model,
    load_checkpoint,
    load_model,
    model_kwargs_from_config,
)

FORMAT_VERSION = 1

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "build_model", "load_checkpoint", "load_model",
           "model_kwargs_from_config", "save_atomic"]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
