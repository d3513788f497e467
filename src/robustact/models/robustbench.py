"""Loading RobustBench-format checkpoints into wrn28_10, wrn34_10, wide_resnet or preact_resnet18.

A RobustBench file is a state dict, possibly wrapped (``{"state_dict": ...}``,
``{"model_state_dict": ...}``, ``{"last": ...}``) and with ``module.`` (DataParallel) or
``model.`` prefixes. Its keys come in three forms, mapped onto our module names:

- TRADES / RobustBench ``WideResNet`` (conv1, block1.layer.0.bn1, ..., fc): our names already;
  an unused ``sub_block1.*`` is dropped and a missing ``fc.bias`` (``bias_last=False``) is 0.
- DeepMind ``DMWideResNet`` (init_conv, layer.0.block.0.batchnorm_0, ..., logits): renamed, and
  the model is built with DeepMind's ``padding="same"`` and Swish.
- RobustBench ``PreActResNet`` (conv1, layer1.0.bn1, shortcut.0, linear, optional bn):
  our names; without ``bn.*`` the model has no final BN and feeds shortcuts the raw input.
- DeepMind ``DMPreActResNet`` depth 18 (conv_2d, layer_0.0.batchnorm_0, ..., logits): renamed,
  built with ``padding="same"`` (3x3 shortcuts on the raw input) and Swish.

Input normalization buffers (``mu``/``sigma`` of RobustBench's wrappers, ``mean``/``std`` of
DeepMind's models) become our ``normalize.mean``/``normalize.std``: the model takes [0, 1]
images and normalizes inside. Files without them get DeepMind's CIFAR-10 mean/std (DM form) or
none (mean 0, std 1); ``mean=``/``std=`` override that. Files load with
``torch.load(weights_only=True)``, so no code in them runs.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.errors import CheckpointError, ConfigError
from robustact.models.factory import create_model
from robustact.models.registry import MODELS

# DeepMind's defaults (RobustBench's dm_wide_resnet CIFAR10_MEAN / CIFAR10_STD)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
WRN_MODELS = ("wide_resnet", "wrn28_10", "wrn34_10")
PREACT_MODELS = ("preact_resnet18",)
CONTAINERS = ("state_dict", "model_state_dict", "model", "last")
PREFIXES = ("module.", "model.")
NORM_KEYS = {"mu": "normalize.mean", "sigma": "normalize.std",
             "mean": "normalize.mean", "std": "normalize.std"}
# DeepMind's names -> ours: top-level prefixes, the block pattern (group, block, part), parts
DM_WRN_TOP = {"init_conv.": "conv1.", "batchnorm.": "bn1.", "logits.": "fc."}
DM_WRN_BLOCK = re.compile(r"^layer\.(\d+)\.block\.(\d+)\.(\w+?)\.")
DM_WRN_PARTS = {"batchnorm_0": "bn1", "conv_0": "conv1", "batchnorm_1": "bn2", "conv_1": "conv2",
                "shortcut": "convShortcut"}
DM_WRN_GROUP = "block{group}.layer.{block}.{part}."
DM_PREACT_TOP = {"conv_2d.": "conv1.", "batchnorm.": "bn.", "logits.": "linear."}
DM_PREACT_BLOCK = re.compile(r"^layer_(\d+)\.(\d+)\.(\w+?)\.")
DM_PREACT_PARTS = {"batchnorm_0": "bn1", "conv_2d_1": "conv1", "batchnorm_1": "bn2",
                   "conv_2d_2": "conv2", "shortcut": "shortcut.0"}
DM_PREACT_GROUP = "layer{group}.{block}.{part}."
# Never required: files saved before PyTorch 0.4.1 lack num_batches_tracked; _extra_state is
# the settings of our k-WTA / KAF activations (no weights), which RobustBench files never hold.
OPTIONAL_SUFFIXES = ("num_batches_tracked", "_extra_state")
SHOWN = 3

State = dict[str, torch.Tensor]


def load_robustbench_state(model_name: str, source: str | Path | Mapping[str, Any],
                           **model_kwargs: Any) -> nn.Module:
    """Build ``model_name`` and load a RobustBench-format checkpoint into it (eval mode).

    ``source``: a ``.pt``/``.pth`` path or an already loaded (possibly wrapped) state dict.
    ``model_kwargs`` go to :func:`create_model` (``act_layer``, ``mean``, ``std``, ...); by
    default the class count, input channels and architecture variant come from the file.
    Raises ConfigError for a model without a RobustBench form or mean/std given for a file
    that carries its own, CheckpointError (one line) for an unreadable file, missing or
    unexpected keys, or shapes that do not fit.
    """
    key = MODELS.resolve(model_name)
    if key not in WRN_MODELS + PREACT_MODELS:
        raise ConfigError(f"model {key!r} has no RobustBench form; use one of "
                          f"{', '.join(WRN_MODELS + PREACT_MODELS)}")
    where = str(source) if isinstance(source, str | Path) else "the given state dict"
    state, implied = robustbench_state_dict(key, read_state(source), where)
    given = {k: v for k, v in model_kwargs.items() if v is not None}
    if "normalize.mean" in state and ("mean" in given or "std" in given):
        raise ConfigError(f"{where} carries its own input normalization (mean/std buffers); "
                          "drop the mean/std arguments")
    model = create_model(key, **{**implied, **given})
    load_mapped(model, state, f"{where} for {key}")
    return model.eval()


def read_state(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """The object stored in ``source`` (a file read without running code), or ``source``."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; give the path of a RobustBench "
                              "state dict (.pt or .pth)")
    try:
        with warnings.catch_warnings():  # torch warns (several lines) about foreign pickles
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # the disk's reason, printed as one line by the command line
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it asks to import {found.group(1)}" if found else "it holds pickled objects"
        raise CheckpointError(f"checkpoint {path} is not a plain state dict: {what}; loading "
                              "was refused so that no code from it runs") from None
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(exc).__name__}); download it again") from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state "
                              "dict; save model.state_dict()")
    return loaded


def unwrap(obj: Mapping[str, Any], where: str) -> State:
    """The tensors of a (possibly wrapped) state dict, without ``module.``/``model.`` prefixes."""
    for _ in range(len(CONTAINERS)):
        inner = next((obj[c] for c in CONTAINERS if isinstance(obj.get(c), Mapping)), None)
        if inner is None:
            break
        obj = inner
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad or not obj:
        raise CheckpointError(
            f"{where} holds no state dict (non-tensor entries: {_few(bad) or 'none, it is empty'})"
            f"; give a state dict, plain or under one of {', '.join(CONTAINERS)}")
    return {_strip(str(k)): v for k, v in obj.items()}


def _strip(key: str) -> str:
    while key.startswith(PREFIXES):
        key = key.split(".", 1)[1]
    return key


def robustbench_state_dict(key: str, obj: Mapping[str, Any],
                           where: str = "the state dict") -> tuple[State, dict[str, Any]]:
    """``obj`` in our key names, and the model arguments the file implies (class count, input
    channels, architecture variant, normalization when the file has none)."""
    state = unwrap(obj, where)
    if key in WRN_MODELS:
        dm = "init_conv.weight" in state
        state, implied = _wrn_state(state, dm), {"padding": "same"} if dm else {}
        classifier = "fc.weight"
    else:
        dm = "conv_2d.weight" in state
        state, implied = _preact_state(state, dm), {}
        implied["final_bn"] = "bn.weight" in state
        # DeepMind's and RobustBench's PreActBlock (no final BN) take the raw input
        implied["shortcut_from"] = "input" if dm or not implied["final_bn"] else "preact"
        implied.update({"padding": "same"} if dm else {})
        classifier = "linear.weight"
    channels = int(state["conv1.weight"].shape[1]) if "conv1.weight" in state else 3
    implied["in_channels"] = channels
    if classifier in state:
        implied["num_classes"] = int(state[classifier].shape[0])
    state = _normalization(state, channels)
    if dm:
        implied["act_layer"] = "swish"  # DeepMind's models in RobustBench all use Swish
    if "normalize.mean" not in state:
        implied.update({"mean": CIFAR10_MEAN, "std": CIFAR10_STD} if dm
                       else {"mean": (0.0,), "std": (1.0,)})
    return state, implied


def _wrn_state(state: State, dm: bool) -> State:
    """WideResNet keys in our names: DeepMind's renamed, ``sub_block1`` dropped, a zero fc bias
    where the file has none."""
    if dm:
        state = {_dm_key(k, DM_WRN_TOP, DM_WRN_BLOCK, DM_WRN_PARTS, DM_WRN_GROUP): v
                 for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    if "fc.weight" in state and "fc.bias" not in state:
        state["fc.bias"] = torch.zeros(state["fc.weight"].shape[0])
    return state


def _preact_state(state: State, dm: bool) -> State:
    """PreActResNet18 keys in our names (RobustBench's are ours; DeepMind's renamed)."""
    if not dm:
        return state
    return {_dm_key(k, DM_PREACT_TOP, DM_PREACT_BLOCK, DM_PREACT_PARTS, DM_PREACT_GROUP): v
            for k, v in state.items()}


def _dm_key(key: str, top: dict[str, str], block: re.Pattern[str], parts: dict[str, str],
            group_name: str) -> str:
    """A DeepMind key in our names (unknown keys unchanged: reported as unexpected)."""
    for theirs, ours in top.items():
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    found = block.match(key)
    if found is None or found.group(3) not in parts:
        return key
    group, index, part = found.groups()
    ours = group_name.format(group=int(group) + 1, block=index, part=parts[part])
    return ours + key[found.end():]


def _normalization(state: State, channels: int) -> State:
    """``mu``/``sigma``/``mean``/``std`` buffers as our ``normalize.*`` of shape (1, C, 1, 1)."""
    out: State = {}
    for key, value in state.items():
        if key in NORM_KEYS:
            key, value = NORM_KEYS[key], value.float().reshape(1, -1, 1, 1)
            if value.shape[1] == 1:
                value = value.expand(1, channels, 1, 1).clone()
        out[key] = value
    return out


def load_mapped(model: nn.Module, state: State, where: str) -> None:
    """Load ``state`` (our key names) into ``model``; one-line CheckpointError if it differs.

    ``normalize.*``, ``*.num_batches_tracked`` and ``*._extra_state`` may be absent: the model
    keeps its own."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state
               and not k.endswith(OPTIONAL_SUFFIXES) and not k.startswith("normalize.")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the keys do not fit (missing: {_few(missing) or 'none'}; unexpected: "
            f"{_few(unexpected) or 'none'}); give the model name the file was saved from")
    wrong = [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        first = wrong[0]
        raise CheckpointError(
            f"{where}: {len(wrong)} tensor(s) have the wrong shape, e.g. {first} is "
            f"{tuple(state[first].shape)} in the file but {tuple(expected[first].shape)} in the "
            "model; give the depth, width and class count the file was saved with")
    model.load_state_dict(state, strict=False)


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "load_mapped", "load_robustbench_state",
           "read_state", "robustbench_state_dict", "unwrap"]
