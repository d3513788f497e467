"""A network from outside robustact: a factory, its arguments, a weights file, a normalization.

The command line's ``--model-factory``, ``--model-arg``, ``--weights``, ``--normalize`` and
``--dataset`` (``robustact attack`` and ``eval``), a study cell's ``external:`` block and
``transfer:surrogate=`` all describe one with a :class:`ModelSpec`::

    spec = ModelSpec.from_dict({"factory": "mynets.cifar:resnet", "args": {"depth": 20},
                                "weights": "resnet.safetensors", "normalize": "cifar10",
                                "dataset": "cifar10"})
    model = build_external(spec, "cpu")    # in eval mode, takes [0, 1] images

``factory`` is ``package.module:function`` (imported: it is the user's code, as it would be in
Python) or a registered model name (``wrn28_10``, ``preact_resnet18``, ...; the RobustBench ones
read RobustBench-format files, ``module.`` prefixes and normalization buffers included). The
weights are a state dict (``.pt``/``.pth``, read with ``weights_only=True``) or a
``.safetensors`` file: loading them never runs code. ``normalize`` wraps a model that expects
normalized inputs: a dataset's name (its mean/std, ``imagenet`` for ImageNet's) or the numbers
``MEAN,STD`` (one each, or C means then C stds).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.errors import CheckpointError, ConfigError
from robustact.models.normalize import Normalize

EXAMPLE = "give e.g. --model-factory mypackage.nets:resnet20 (a function returning the model)"


@dataclass(frozen=True)
class ModelSpec:
    """Where a user's network comes from and what data it takes."""

    factory: str
    dataset: str | None = None  # what the model was trained on (the evaluation's data)
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    resize: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "external") -> ModelSpec:
        """A spec from a mapping (a study cell's ``external:`` block, flags), checked."""
        unknown = sorted(set(data) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: factory, "
                              "dataset, args, weights, normalize, resize")
        factory, dataset = data.get("factory"), data.get("dataset")
        if not isinstance(factory, str) or not factory.strip():
            raise ConfigError(f"{where}: needs a factory, got {factory!r}; {EXAMPLE}")
        if dataset is not None and (not isinstance(dataset, str) or not dataset):
            raise ConfigError(f"{where}: dataset must be a dataset's name, got {dataset!r}; "
                              "give e.g. --dataset cifar10")
        args = data.get("args") or {}
        if not isinstance(args, Mapping):
            raise ConfigError(f"{where}: args must be a mapping, got {args!r}; give e.g. "
                              "--model-arg depth=20")
        weights, resize = data.get("weights"), data.get("resize")
        if resize is not None and (not isinstance(resize, int) or resize < 1):
            raise ConfigError(f"{where}: resize must be a size in pixels >= 1, got {resize!r}; "
                              "give e.g. --resize 224")
        return cls(factory.strip(), dataset, dict(args),
                   None if weights is None else str(weights),
                   parse_normalize(data.get("normalize"), f"{where}.normalize"), resize)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def weights_stamp(self) -> list[Any] | None:
        """The weights file's resolved path, size and time (what identifies its contents),
        or None without a file (none given, or missing)."""
        path = Path(self.weights).resolve() if self.weights is not None else None
        if path is None or not path.is_file():
            return None
        stat = path.stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]

    def label(self) -> str:
        """How records and tables name it: ``mynets.cifar:resnet(depth=20)``."""
        args = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.factory}({args})"


def parse_normalize(value: Any, where: str = "--normalize"
                    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of a dataset name, ``"MEAN,STD"``, C means then C stds, or a mapping
    ``{mean: [...], std: [...]}``; None stays None."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, Mapping):
        mean, std = value.get("mean"), value.get("std")
        numbers = [*(mean if isinstance(mean, list) else [mean]),
                   *(std if isinstance(std, list) else [std])]
        return _halves(numbers, value, where)
    text = str(value).strip()
    if text and text[0].isalpha():
        return _named(text, where)
    return _halves(text.split(","), value, where)


def _named(name: str, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from robustact.data import dataset_info
    from robustact.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

    if name.lower() == "imagenet":
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    try:
        info = dataset_info(name)
    except Exception:  # noqa: BLE001 - an unknown name: say what is accepted
        raise ConfigError(f"{where}: {name!r} is neither numbers nor a dataset; give MEAN,STD "
                          "(e.g. 0.5,0.5), C means then C stds, imagenet or a dataset name "
                          "(cifar10)") from None
    return tuple(info.mean), tuple(info.std)


def _halves(items: list[Any], given: Any, where: str
            ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        numbers = []
    half = len(numbers) // 2
    if not numbers or len(numbers) % 2 or min(numbers[half:]) <= 0:
        raise ConfigError(f"{where}: {given!r} is not MEAN,STD; give one mean and one std > 0 "
                          "(0.5,0.5), C means then C stds (0.49,0.48,0.45,0.25,0.24,0.26) or a "
                          "dataset name (cifar10)")
    return tuple(numbers[:half]), tuple(numbers[half:])


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)``: a model that expects normalized inputs, fed [0, 1] images."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.normalize = Normalize(mean, std, num_channels=len(mean))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def build_external(spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    """The network ``spec`` describes, its weights loaded, in eval mode on ``device``."""
    if ":" in spec.factory:
        model = _call_factory(spec)
        if spec.weights is not None:
            load_weights(model, spec.weights, f"for {spec.factory}")
    else:
        model = _registered(spec)
    if spec.normalize is not None:
        _check_channels(spec)
        model = NormalizedModel(model, *spec.normalize)
    _check_finite(model, spec)
    return model.to(device).eval()


def check_spec(spec: ModelSpec) -> None:
    """What can be checked without building the model: the factory imports (or names a
    registered model) and the weights file exists; a one-line error otherwise."""
    if ":" in spec.factory:
        import_factory(spec.factory)
    else:
        from robustact.models.registry import MODELS

        MODELS.resolve(spec.factory)
    if spec.weights is not None and not Path(spec.weights).is_file():
        raise CheckpointError(f"weights {spec.weights} not found; give the path of a state "
                              "dict or a .safetensors file")


def _check_channels(spec: ModelSpec) -> None:
    """One mean/std, or one per channel of the dataset's images: a one-line error otherwise
    (it would fail later as a shape error inside the model)."""
    if spec.dataset is None or spec.normalize is None:
        return
    from robustact.data import dataset_info

    channels, given = dataset_info(spec.dataset).in_channels, len(spec.normalize[0])
    if given not in (1, channels):
        raise ConfigError(f"--normalize has {given} means and stds but {spec.dataset} images "
                          f"have {channels} channel(s); give one value each or {channels}")


def import_factory(path: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names (its module is imported; the working
    directory is searched first, so ``robustact`` finds a module beside the user as ``python``
    does)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model factory {path!r} is not package.module:function; {EXAMPLE}")
    if os.getcwd() not in sys.path:  # as `python -m` would, and uvicorn's --app-dir .
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model factory {path}: cannot import {module_name} ({exc}); put its "
                          "folder on PYTHONPATH or install its package") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"model factory {path}: {module_name} has no {attr}; {EXAMPLE}")
    if not callable(factory):
        raise ConfigError(f"model factory {path} is a {type(factory).__name__}, not a function")
    return factory


def _call_factory(spec: ModelSpec) -> nn.Module:
    factory = import_factory(spec.factory)
    try:
        model = factory(**spec.args)
    except TypeError as exc:
        raise ConfigError(f"model factory {spec.factory} refused the arguments "
                          f"{spec.args or '(none)'}: {str(exc).splitlines()[0]}; fix "
                          "--model-arg") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec.factory} returned a {type(model).__name__}, "
                          "not a torch nn.Module")
    return model


def _registered(spec: ModelSpec) -> nn.Module:
    """A model of robustact's registry, its weights read as RobustBench files where it has
    that form, else as a plain state dict of the same model."""
    from robustact.data import dataset_info
    from robustact.models.factory import create_model
    from robustact.models.registry import MODELS
    from robustact.models.robustbench import PREACT_MODELS, WRN_MODELS, load_robustbench_state

    key = MODELS.resolve(spec.factory)
    if spec.weights is not None and key in WRN_MODELS + PREACT_MODELS:
        return load_robustbench_state(key, spec.weights, **spec.args)
    args = dict(spec.args)
    if spec.dataset is not None:
        info = dataset_info(spec.dataset)
        args = {"num_classes": info.num_classes, "in_channels": info.in_channels, **args}
    model = create_model(key, **args)
    if spec.weights is not None:
        load_weights(model, spec.weights, f"for {key}")
    return model


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a (wrapped, ``module.``-prefixed) state
    dict read with ``weights_only=True``; nothing in the file runs."""
    from robustact.models.robustbench import read_state, unwrap

    path = Path(path)
    if path.suffix != ".safetensors":
        return unwrap(read_state(path), str(path))
    if not path.is_file():
        raise CheckpointError(f"weights {path} not found; give the path of a state dict or "
                              "a .safetensors file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return unwrap(load_file(str(path)), str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"weights {path} is not a readable safetensors file ({exc}); "
                              "save it again with safetensors.torch.save_file") from None


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load the weights file ``path`` into ``model``; one line when the keys or shapes differ."""
    from robustact.models.robustbench import load_mapped

    load_mapped(model, read_weights(path), f"weights {path} {what}")


def _check_finite(model: nn.Module, spec: ModelSpec) -> None:
    from robustact.models.common import first_non_finite

    name = first_non_finite(model.state_dict().items())
    if name is not None:
        raise CheckpointError(f"weights {spec.weights or spec.factory} hold NaN/inf "
                              f"({name}); give weights of a converged training")
