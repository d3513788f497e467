"""Loading trained models: a robustact checkpoint back into the network it was trained as."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file of ``path`` (a run directory or the file itself)."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a robustact checkpoint (a directory holding ``checkpoint.pt`` or the file itself)."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with `robustact train`")
    try:
        with warnings.catch_warnings():  # torch warns (several lines) about foreign pickles
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise  # the disk's reason, printed as one line by the command line
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refused(path, str(exc))) from None
    except Exception as exc:  # torch raises several types for a damaged file
        first = next((line for line in str(exc).splitlines() if line.strip()),
                     type(exc).__name__).split(". ")[0]  # torch's first sentence says it
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first[:200]}); "
                              "restore it from a copy or train it again with `robustact "
                              "train`") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a robustact checkpoint (no model_state/config); "
                              "give the checkpoint.pt written by `robustact train`")
    return ckpt


def _refused(path: Path, reason: str) -> str:
    """The message for a file the safe loader refused: it asks to import code (a hostile or
    foreign pickle), which is not what a damaged checkpoint looks like."""
    found = re.search(r"GLOBAL ([\w.]+)", reason)
    what = f"it asks to import {found.group(1)}" if found else "it holds pickled objects"
    return (f"checkpoint {path} is not a plain checkpoint: {what}, and loading it was refused "
            "so that no code from it runs; use only checkpoints written by `robustact train` "
            "from a source you trust")


def model_kwargs_from_config(config: dict[str, Any], info: Any) -> dict[str, Any]:
    """The ``create_model`` arguments a training config implies, given the dataset's info."""
    kwargs = dict(config.get("model_kwargs") or {})
    kwargs.setdefault("num_classes", info.num_classes)
    kwargs.setdefault("in_channels", info.in_channels)
    kwargs["act_layer"] = config["activation"]
    kwargs["act_kwargs"] = dict(config.get("act_kwargs") or {})
    if not config.get("pretrained"):
        kwargs.setdefault("mean", info.mean)
        kwargs.setdefault("std", info.std)
    return kwargs


def build_model(config: dict[str, Any], *, pretrained: bool = True) -> nn.Module:
    """Construct the (untrained) model a training config describes."""
    from robustact.data import dataset_info
    from robustact.models.factory import create_model

    kwargs = model_kwargs_from_config(config, dataset_info(config["dataset"]))
    if pretrained and config.get("pretrained"):
        kwargs["pretrained"] = config["pretrained"]
    return create_model(config["model"], **kwargs)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint; returns ``(model in eval mode, config dict)``."""
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    model = build_model(config, pretrained=False)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not match model {config['model']!r}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    _check_finite(model, path)
    return model.to(device).eval(), config


def _check_finite(model: nn.Module, path: str | Path) -> None:
    """A one-line error when a weight holds NaN or inf (a diverged training): every
    prediction of such a model is meaningless."""
    from robustact.models.common import first_non_finite

    name = first_non_finite(model.named_parameters())
    if name is not None:
        raise CheckpointError(f"checkpoint {checkpoint_file(path)} holds NaN/inf weights "
                              f"({name}): its training diverged; train it again, e.g. "
                              "with a lower learning rate")
