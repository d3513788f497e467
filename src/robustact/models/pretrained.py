"""Fine-tuning from torchvision-format ImageNet weights (resnet18 and alexnet).

torchvision's state-dict keys are mapped explicitly onto our module names (they coincide today,
but the mapping is spelled out so a renamed module breaks loudly, not silently). Our models
also hold ``normalize.*`` buffers, which torchvision files lack; with ImageNet weights use
ImageNet normalization (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), as
``create_model(..., pretrained=path)`` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.errors import CheckpointError, ConfigError
from robustact.models.alexnet import AlexNet
from robustact.models.resnet import ResNet18

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Old torchvision files (saved before PyTorch 0.4.1) lack num_batches_tracked: never required.
OPTIONAL_SUFFIX = "num_batches_tracked"
HEAD_KEYS = {
    "resnet18": ("fc.weight", "fc.bias"),
    "alexnet": ("classifier.6.weight", "classifier.6.bias"),
}

Report = dict[str, list[str]]


def resnet18_key_map() -> dict[str, str]:
    """torchvision ``resnet18`` state-dict key -> key of our ``ResNet18(stem="imagenet")``."""
    mapping: dict[str, str] = {}

    def conv(tv: str, ours: str) -> None:
        mapping[f"{tv}.weight"] = f"{ours}.weight"

    def bn(tv: str, ours: str) -> None:
        mapping.update({f"{tv}.{s}": f"{ours}.{s}" for s in BN_SUFFIXES})

    conv("conv1", "conv1")
    bn("bn1", "bn1")
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            conv(f"{prefix}.conv1", f"{prefix}.conv1")
            bn(f"{prefix}.bn1", f"{prefix}.bn1")
            conv(f"{prefix}.conv2", f"{prefix}.conv2")
            bn(f"{prefix}.bn2", f"{prefix}.bn2")
            if layer > 1 and block == 0:
                conv(f"{prefix}.downsample.0", f"{prefix}.downsample.0")
                bn(f"{prefix}.downsample.1", f"{prefix}.downsample.1")
    mapping.update({"fc.weight": "fc.weight", "fc.bias": "fc.bias"})
    return mapping


def alexnet_key_map() -> dict[str, str]:
    """torchvision ``alexnet`` state-dict key -> key of our :class:`AlexNet`."""
    mapping: dict[str, str] = {}
    for index in (0, 3, 6, 8, 10):
        for suffix in ("weight", "bias"):
            mapping[f"features.{index}.{suffix}"] = f"features.{index}.{suffix}"
    for index in (1, 4, 6):
        for suffix in ("weight", "bias"):
            mapping[f"classifier.{index}.{suffix}"] = f"classifier.{index}.{suffix}"
    return mapping


def torchvision_arch(model: nn.Module) -> str:
    """``"resnet18"`` or ``"alexnet"``: the torchvision architecture ``model`` can load."""
    if isinstance(model, ResNet18):
        if model.stem != "imagenet":
            raise ConfigError(
                "torchvision weights need the ImageNet stem: build resnet18 with stem='imagenet'"
            )
        return "resnet18"
    if isinstance(model, AlexNet):
        return "alexnet"
    raise ConfigError(
        f"torchvision weights load only into resnet18 (stem='imagenet') and alexnet, "
        f"not {type(model).__name__}"
    )


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` path (``torch.load(weights_only=True)``) or a mapping."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path}; give the path of a .pth file")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt or non-tensor files
            raise CheckpointError(
                f"cannot read {path} as a weights file ({type(exc).__name__}); "
                "expected a torchvision state dict saved with torch.save"
            ) from None
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a state dict (mapping), got {type(source).__name__}")
    if "state_dict" in source and isinstance(source["state_dict"], Mapping):
        source = source["state_dict"]
    state = {_strip_prefix(k): v for k, v in source.items()}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor; expected a torchvision state dict")
    return state


def _strip_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _head_differs(state: Mapping[str, torch.Tensor], own: Mapping[str, Any],
                  key_map: Mapping[str, str], head: tuple[str, ...]) -> bool:
    return any(k in state and _shape(state[k]) != _shape(own[key_map[k]]) for k in head)


def load_torchvision_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict_backbone: bool = True,
) -> Report:
    """Copy torchvision ImageNet weights into ``model`` (resnet18 stem='imagenet' or alexnet).

    Every backbone tensor is copied after a shape check (a mismatch raises
    :class:`CheckpointError` naming the key and both shapes). The final classifier
    (``fc`` / ``classifier.6``) is skipped when its shape differs, so a new
    num_classes-way head keeps its fresh initialization. With ``strict_backbone`` a backbone
    key absent from the file, or a key the architecture does not have, raises
    :class:`CheckpointError`; without it they are reported.

    Returns ``{"loaded": [...], "skipped": [...], "missing": [...]}``: model keys filled from
    the file; file keys not copied (a head of another shape, unknown keys); model keys the
    file did not fill (besides a skipped head and ``normalize.*``), e.g. ``num_batches_tracked``
    of old files or parameters of a learnable activation.
    """
    arch = torchvision_arch(model)
    key_map = resnet18_key_map() if arch == "resnet18" else alexnet_key_map()
    head = HEAD_KEYS[arch]
    state = read_state_dict(source)
    own = model.state_dict()
    report: Report = {"loaded": [], "skipped": [], "missing": []}
    unexpected = sorted(set(state) - set(key_map))
    if unexpected and strict_backbone:
        raise CheckpointError(
            f"weights have key {unexpected[0]!r} ({len(unexpected)} unknown in all) that "
            f"torchvision {arch} does not have; pass strict_backbone=False to ignore them"
        )
    report["skipped"].extend(unexpected)
    skip_head = _head_differs(state, own, key_map, head)
    with torch.no_grad():
        for tv_key, our_key in key_map.items():
            if tv_key not in state:
                _check_optional(tv_key, arch, head, strict_backbone)
                report["missing"].append(our_key)
            elif tv_key in head and skip_head:
                report["skipped"].append(tv_key)
            else:
                _copy(tv_key, state[tv_key], own[our_key])
                report["loaded"].append(our_key)
    mapped = set(key_map.values())
    report["missing"].extend(k for k in own if k not in mapped and _reportable(k))
    return report


def _check_optional(tv_key: str, arch: str, head: tuple[str, ...], strict: bool) -> None:
    if strict and tv_key not in head and not tv_key.endswith(OPTIONAL_SUFFIX):
        raise CheckpointError(
            f"weights lack {tv_key!r}; expected a torchvision {arch} state dict "
            "(pass strict_backbone=False to load a partial one)"
        )


def _copy(key: str, source: torch.Tensor, target: torch.Tensor) -> None:
    if _shape(source) != _shape(target):
        raise CheckpointError(
            f"weights key {key!r} has shape {_shape(source)} but the model expects "
            f"{_shape(target)}; check in_channels=3 and the architecture"
        )
    target.copy_(source)


def _reportable(key: str) -> bool:
    return not key.startswith("normalize.") and not key.endswith("_extra_state")
