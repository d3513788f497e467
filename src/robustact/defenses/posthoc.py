"""Post hoc defense surgery: the DEFENSES registry, and applying and removing defenses in place.

A registered defense is applied to the sites of a trained network, without retraining, and
removed exactly.

    >>> apply_sap(model, frac=1.0)            # SAP-100 after every activation module
    >>> apply_defense(model, "rnw", s=0.01)   # fresh Gaussian noise on every conv/linear weight
    >>> remove_defense(model)                 # the undefended model again, bit for bit

Two kinds of sites:

- **activation sites** (``sap``, ``dro``, ``rna``, ``rsa``): every activation module ``a``
  (:func:`robustact.activations.is_activation`) is replaced by
  ``DefendedActivation(a, layer)``, whose forward is ``layer(a(x))``; removal puts ``a`` back.
  A module registered at several places gets one wrapper, shared the same way.
- **weight sites** (``rnw``, ``rsw``, ``dwp``, ``swp``): every ``nn.Linear`` and
  ``nn.Conv1d/2d/3d`` (not biases, not BatchNorm) gets a child ``weight_defense`` module and a
  forward pre-hook that computes ``weight_defense(W)`` from the stored weight ``W`` afresh at
  every forward and shows it to the layer's ``forward`` as ``self.weight`` (an instance
  attribute shadowing the parameter for the duration of the call; a forward hook that also
  runs when forward raises takes it away). The stored ``Parameter`` is never written or
  moved, so ``parameters()``, optimizers and ``state_dict()`` are untouched; gradients reach
  it through the perturbation. Outside forward, ``layer.weight`` is the stored weight.
  (``torch.nn.utils.parametrize`` was not used: it renames the state_dict keys, and a
  deep-copied parametrized module shares its generated class with the original, so removing
  the parametrization from one breaks the other.)

The layers and their definitions are in :mod:`robustact.defenses.layers` (SAP in
:mod:`robustact.defenses.sap`). All defenses act in train and eval mode (they are test-time
defenses). Activation-site draws are per element, so the samples of a batch, and EOT's
replicated copies, get independent draws. Weight-site draws (rnw, rsw, swp) happen once per
forward and are shared by the whole batch: ``EOT(model, n)``, which runs the n copies in one
forward, would average n copies of *one* draw there; use ``EOT(model, n, max_batch=len(x))``
(one forward per draw). :func:`batch_shared_randomness` tells which case a model is in. Every
stochastic defense takes ``generator=`` (a ``torch.Generator`` on the model's device) for
reproducible draws; default: the global RNG.

``state_dict()`` of a defended model has the keys, order and values of the undefended model
(the wrappers hide their ``act.`` level; the defense itself is not saved, re-apply it after
loading), and such a state dict loads into the defended and the undefended model alike.
``named_parameters()`` and ``named_modules()`` do show the wrappers while a defense is applied.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustact.activations.convert import is_activation
from robustact.defenses import layers
from robustact.defenses.layers import DefendedActivation
from robustact.defenses.sap import SAP
from robustact.errors import ConfigError
from robustact.registry import Registry

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ACTIVATION_SITE, WEIGHT_SITE = "activation", "weight"
Build = Callable[..., nn.Module]


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class DefenseSpec:
    """A registered post hoc defense: where it acts, how to build one site's module, and what
    its parameters are (``required`` must be given; the others have defaults)."""

    name: str
    site: str
    build: Build
    required: tuple[str, ...]
    summary: str

    def parameters(self) -> list[str]:
        names = list(inspect.signature(self.build).parameters)
        return names[1:] if self.site == WEIGHT_SITE else names


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def register_defense(name: str, *, site: str, summary: str,
                     required: tuple[str, ...] = ()) -> Callable[[Build], Build]:
    """Decorator registering ``build`` as the defense ``name``: ``build(**params)`` (activation
    sites) or ``build(weight, **params)`` (weight sites) makes one site's module."""

    def decorator(build: Build) -> Build:
        DEFENSES.add(name, DefenseSpec(name, site, build, required, summary))
        return build

    return decorator


@register_defense("sap", site=ACTIVATION_SITE,
                  summary="Stochastic Activation Pruning after every activation "
                          "(frac=1.0: SAP-100)")
def _build_sap(frac: float = 1.0, *, method: str = "multinomial",
               generator: torch.Generator | None = None) -> nn.Module:
    return SAP(frac, method=method, generator=generator)


@register_defense("dro", site=ACTIVATION_SITE, required=("p",),
                  summary="dropout with drop rate p after every activation, also in eval mode")
def _build_dro(p: float, *, generator: torch.Generator | None = None) -> nn.Module:
    return layers.TestTimeDropout(p, generator=generator)


@register_defense("rna", site=ACTIVATION_SITE, required=("s",),
                  summary="additive N(0, s^2) noise on every activation map")
def _build_rna(s: float, *, generator: torch.Generator | None = None) -> nn.Module:
    return layers.GaussianNoise(s, generator=generator)


@register_defense("rsa", site=ACTIVATION_SITE, required=("s",),
                  summary="multiplicative N(1, s^2) noise on every activation map")
def _build_rsa(s: float, *, generator: torch.Generator | None = None) -> nn.Module:
    return layers.GaussianScaling(s, generator=generator)


@register_defense("rnw", site=WEIGHT_SITE, required=("s",),
                  summary="additive N(0, s^2) noise on every conv/linear weight")
def _build_rnw(weight: torch.Tensor, s: float, *,
               generator: torch.Generator | None = None) -> nn.Module:
    return layers.NoisyWeights(s, generator=generator)


@register_defense("rsw", site=WEIGHT_SITE, required=("s",),
                  summary="multiplicative N(1, s^2) noise on every conv/linear weight")
def _build_rsw(weight: torch.Tensor, s: float, *,
               generator: torch.Generator | None = None) -> nn.Module:
    return layers.ScaledWeights(s, generator=generator)


@register_defense("dwp", site=WEIGHT_SITE, required=("keep",),
                  summary="keep the fraction keep of largest-magnitude entries of every "
                          "conv/linear weight")
def _build_dwp(weight: torch.Tensor, keep: float) -> nn.Module:
    return layers.PrunedWeights(weight, keep)


@register_defense("swp", site=WEIGHT_SITE, required=("frac",),
                  summary="SAP over the entries of every conv/linear weight")
def _build_swp(weight: torch.Tensor, frac: float, *,
               generator: torch.Generator | None = None) -> nn.Module:
    return layers.StochasticPrunedWeights(frac, generator=generator)


# ---------------------------------------------------------------------------------------------
# apply / remove


def list_defenses() -> list[str]:
    """Names of the registered post hoc defenses."""
    return DEFENSES.names()


def defense_spec(name: str) -> DefenseSpec:
    return DEFENSES.get(name)


def apply_defense(model: nn.Module, name: str, **params: Any) -> nn.Module:
    """Apply the post hoc defense ``name`` (see :func:`list_defenses`) to ``model`` in place.

    ``params`` are the defense's parameters (``frac`` for sap/swp, ``p`` for dro, ``s`` for
    rnw/rsw/rna/rsa, ``keep`` for dwp, ``generator`` for the stochastic ones). Each site gets
    its own module. Sites that already carry a defense of the same kind are skipped; raises
    :class:`ConfigError` for unknown or missing parameters, and when no site was found (no
    activation modules, or no conv/linear layers) or every site is already defended.
    Returns ``model``.
    """
    spec = DEFENSES.get(name)
    _check_params(spec, params)
    if spec.site == ACTIVATION_SITE:
        count, defended = _wrap_activations(model, spec, params)
        where = "activation modules"
        hint = ("functional calls such as F.relu in forward() cannot be defended - use nn.ReLU "
                "modules")
    else:
        count, defended = _defend_weights(model, spec, params)
        where = "conv/linear layers"
        hint = "weights are taken from nn.Linear and nn.Conv1d/2d/3d modules"
    if count == 0:
        if defended:
            raise ConfigError(
                f"every one of the {defended} {where} of {type(model).__name__} already carries "
                f"a defense ({', '.join(applied_defenses(model)) or 'SAP built into the model'})"
                f"; call remove_defense(model) before applying {spec.name}"
            )
        raise ConfigError(f"{type(model).__name__} has no {where} to apply {spec.name} to; {hint}")
    return model


def check_defense(name: str, params: dict[str, Any]) -> None:
    """Raise the one-line error :func:`apply_defense` would give for ``name`` and ``params``
    (unknown defense, unknown or missing parameter, a bad value of an activation-site
    defense), without a model: study files are checked before any cell runs."""
    spec = DEFENSES.get(name)
    _check_params(spec, params)
    if spec.site == ACTIVATION_SITE:
        spec.build(**params)
    else:  # a stand-in weight: the values are checked as on a real layer
        spec.build(nn.Parameter(torch.ones(2, 2)), **params)


def _check_params(spec: DefenseSpec, params: dict[str, Any]) -> None:
    accepted = spec.parameters()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"defense {spec.name!r} takes {', '.join(accepted)}; "
                          f"got unknown {', '.join(unknown)}")
    missing = [p for p in spec.required if p not in params]
    if missing:
        raise ConfigError(f"defense {spec.name!r} needs {', '.join(missing)} "
                          f"({spec.summary})")


def _wrap_activations(model: nn.Module, spec: DefenseSpec,
                      params: dict[str, Any]) -> tuple[int, int]:
    """Wrap every undefended activation; returns (wrapped, already defended) counts."""
    spec.build(**params)  # fail before changing anything
    wrapped: dict[int, DefendedActivation] = {}
    for parent in list(model.modules()):
        if isinstance(parent, DefendedActivation):
            continue
        for child_name, child in list(parent._modules.items()):
            if not is_activation(child) or _is_defense_layer(child):
                continue
            wrapper = wrapped.get(id(child))
            if wrapper is None:
                wrapper = wrapped[id(child)] = DefendedActivation(
                    child, spec.build(**params), name=spec.name)
            setattr(parent, child_name, wrapper)
    # already defended: earlier wrappers, and SAP layers built into the model (ReLUSAP sites)
    wrappers = [m for m in model.modules() if isinstance(m, DefendedActivation)]
    built_in = sum(isinstance(m, SAP) for m in model.modules()) - sum(
        isinstance(w.defense, SAP) for w in wrappers)
    return len(wrapped), len(wrappers) - len(wrapped) + built_in


def _is_defense_layer(module: nn.Module) -> bool:
    return isinstance(module, SAP | layers.TestTimeDropout | layers.GaussianNoise
                      | layers.GaussianScaling | DefendedActivation)


def _defend_weights(model: nn.Module, spec: DefenseSpec,
                    params: dict[str, Any]) -> tuple[int, int]:
    """Give every undefended conv/linear layer a weight defense; returns (new, already)."""
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    todo = [layer for layer in layers if _weight_defense(layer) is None]
    for layer in todo:
        if isinstance(layer.weight, nn.parameter.UninitializedParameter):
            raise ConfigError(f"{type(layer).__name__} is lazy and not initialized yet; run one "
                              f"forward pass before applying {spec.name}")
        if "weight" not in layer._parameters or "weight" in layer.__dict__:
            raise ConfigError(f"the weight of a {type(layer).__name__} is not a plain parameter "
                              f"(parametrized?); remove that before applying {spec.name}")
    built = [spec.build(layer.weight, **params) for layer in todo]  # fail before changing
    for layer, module in zip(todo, built, strict=True):
        module.defense_name = spec.name
        layer.add_module("weight_defense", module)
        layer.register_forward_pre_hook(_perturb_weight)
        layer.register_forward_hook(_restore_weight, always_call=True)
    return len(todo), len(layers) - len(todo)


def _weight_defense(layer: nn.Module) -> nn.Module | None:
    module = layer._modules.get("weight_defense")
    return module if hasattr(module, "defense_name") else None



def _perturb_weight(layer: nn.Module, args: Any) -> None:
    # an instance attribute is found before Module.__getattr__ looks into _parameters
    layer.__dict__["weight"] = layer.weight_defense(layer._parameters["weight"])


def _restore_weight(layer: nn.Module, args: Any, output: Any) -> None:
    layer.__dict__.pop("weight", None)



def remove_defense(model: nn.Module, name: str | None = None) -> nn.Module:
    """Undo :func:`apply_defense` in place: every defense of ``model`` (default) or only those
    named ``name``. Activations are put back and the weight hooks and ``weight_defense``
    modules removed, so modules, parameters (the very same objects), buffers, ``state_dict()``
    and outputs are those of the model before the defense. A model without defenses is
    returned unchanged. Returns ``model``.
    """
    key = None if name is None else DEFENSES.resolve(name)
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, DefendedActivation) and key in (None, child.defense_name):
                setattr(parent, child_name, child.act)
    for layer in list(model.modules()):
        own = _weight_defense(layer)
        if own is not None and key in (None, own.defense_name):
            _remove_hooks(layer)
            del layer.weight_defense
            layer.__dict__.pop("weight", None)
    return model


def _remove_hooks(layer: nn.Module) -> None:
    for hook_id, hook in list(layer._forward_pre_hooks.items()):
        if hook is _perturb_weight:
            del layer._forward_pre_hooks[hook_id]
    for hook_id, hook in list(layer._forward_hooks.items()):
        if hook is _restore_weight:
            del layer._forward_hooks[hook_id]
            layer._forward_hooks_always_called.pop(hook_id, None)


def applied_defenses(model: nn.Module) -> list[str]:
    """Names of the defenses applied to ``model`` (sorted, each once)."""
    names = {m.defense_name for m in model.modules() if isinstance(m, DefendedActivation)}
    for layer in model.modules():
        own = _weight_defense(layer)
        if own is not None:
            names.add(own.defense_name)
    return sorted(names)


def batch_shared_randomness(model: nn.Module) -> bool:
    """Whether ``model`` has a stochastic defense drawn once per forward for the whole batch
    (rnw, rsw, swp with s > 0): then copies of an input in one batch are not independent
    draws, and EOT needs one forward per draw (``EOT(model, n, max_batch=len(x))``)."""
    for layer in model.modules():
        own = _weight_defense(layer)
        if own is not None and own.randomized and getattr(own, "s", 1.0) > 0:
            return True
    return False


def apply_sap(model: nn.Module, frac: float = 1.0, **kwargs: Any) -> nn.Module:
    """Insert :class:`SAP` (``frac``, plus ``method=`` / ``generator=``) after every
    activation module of ``model``, in place, without retraining. Returns ``model``."""
    return apply_defense(model, "sap", frac=frac, **kwargs)


def remove_sap(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_sap` exactly (other defenses stay). Returns ``model``."""
    return remove_defense(model, "sap")
