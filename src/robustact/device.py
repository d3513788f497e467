"""Device selection: cuda > mps > cpu unless the user forces one."""

from __future__ import annotations

import torch

from robustact.errors import ConfigError


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks cuda, then mps, then cpu; any other name is validated."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype used for mixed precision on ``device`` (None: AMP off)."""
    return torch.float16 if device.type == "cuda" else None
