"""Saving checkpoints atomically: a run killed mid-write keeps its previous checkpoint."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from robustact.files import write_atomic
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
    """``torch.save`` into memory, then write the bytes to a temporary file beside ``path``,
    fsync, and rename over ``path``.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one. A full
    disk is an ``OSError`` naming the file (torch's own writer reports it as a RuntimeError of
    its C++ core), and no temporary file is left.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer().tobytes())
