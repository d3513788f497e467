"""Post hoc defenses: SAP and the stochastic baselines of its paper, applied to a trained network
in place, without retraining, and removed exactly.

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

The definitions (seed 004: section 4.1 for DRO, appendix B for the others; ``j`` indexes the
entries of one weight tensor ``W`` or one activation map ``h``):

====  ==========================================================================================
dro   dropout after every activation, also in eval mode: ``h_j * b_j / (1 - p)``,
      ``b_j ~ Bernoulli(1 - p)``; ``p`` is the drop rate (inverted-dropout scaling, as in
      ``torch.nn.Dropout`` and MXNet's Dropout the authors used).
rnw   "adding random Gaussian noise to each weight, with 0-mean and constant standard
      deviation, s": ``M(W)_j = W_j + eta_j``, ``eta_j ~ N(0, s^2)``. ``s`` is absolute, in the
      weights' own units (not relative to the layer's weight scale).
rsw   "The scale factor can be picked from a Gaussian distribution, with mean 1 and constant
      standard deviation s": ``M(W)_j = eta_j W_j``, ``eta_j ~ N(1, s^2)`` (``s`` relative).
dwp   "the top k% entries of a weight matrix were kept, while the rest were pruned to 0,
      according to their absolute values", per weight tensor, without fine-tuning: ``keep`` =
      k/100 is the fraction kept (``round(keep * numel)``, at least 1; ties broken by
      ``torch.topk``). Deterministic; the mask is fixed when the defense is applied.
swp   SAP on the weights: per weight tensor ``p_j = |W_j| / sum |W|``, ``r`` = k% of its entries
      drawn with replacement, drawn entries scaled by ``1 / (1 - (1 - p_j)^r)``, the others 0;
      ``frac`` = k/100. (The formula is missing from the seed's text; this is the SAP formula
      of section 3 applied to weight tensors, as the section's "k% of samples" describes.)
rna   additive noise on activations: ``M(h)_j = h_j + eta_j``, ``eta_j ~ N(0, s^2)``, ``s``
      absolute (in the activations' units).
rsa   multiplicative noise on activations: ``M(h)_j = eta_j h_j``, ``eta_j ~ N(1, s^2)``.
sap   Stochastic Activation Pruning, :class:`robustact.defenses.SAP` (``frac``, ``method``).
====  ==========================================================================================

Every noise variable is drawn independently per entry. All defenses act in train and eval mode
(they are test-time defenses). Activation-site draws are per element, so the samples of a batch,
and EOT's replicated copies, get independent draws. Weight-site draws (rnw, rsw, swp) happen
once per forward and are shared by the whole batch: ``EOT(model, n)``, which runs the n copies
in one forward, would average n copies of *one* draw there; use ``EOT(model, n,
max_batch=len(x))`` (one forward per draw). :func:`batch_shared_randomness` tells which case
a model is in. Every stochastic defense takes ``generator=`` (a ``torch.Generator`` on the
model's device) for reproducible draws; default: the global RNG.

``state_dict()`` of a defended model has the keys, order and values of the undefended model
(the wrappers hide their ``act.`` level; the defense itself is not saved, re-apply it after
loading), and such a state dict loads into the defended and the undefended model alike.
``named_parameters()`` and ``named_modules()`` do show the wrappers while a defense is applied.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustact.activations.convert import is_activation
from robustact.defenses.sap import SAP, check_frac, sap
from robustact.errors import ConfigError
from robustact.registry import Registry

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ACTIVATION_SITE, WEIGHT_SITE = "activation", "weight"


def _check_std(name: str, s: float) -> float:
    if isinstance(s, bool) or not isinstance(s, int | float) or not (math.isfinite(s) and s >= 0):
        raise ConfigError(f"{name}: the noise std s must be a finite number >= 0, got {s!r}")
    return float(s)


def _check_fraction(name: str, what: str, value: float, *, zero_ok: bool = False,
                    one_ok: bool = True) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    low_ok = number and (value >= 0 if zero_ok else value > 0)
    if not (low_ok and (value <= 1 if one_ok else value < 1)):
        interval = f"{'[' if zero_ok else '('}0, 1{']' if one_ok else ')'}"
        raise ConfigError(f"{name}: {what} must be in {interval}, got {value!r}")
    return float(value)


def _check_generator(name: str, generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"{name}: generator must be a torch.Generator, got {generator!r}")
    return generator


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------------------------
# activation-site layers (SAP is in sap.py)


class TestTimeDropout(nn.Module):
    """Dropout that stays on in eval mode (DRO): ``h * b / (1 - p)``, ``b ~ Bernoulli(1 - p)``.

    Shapes: any (B, ...) in and out.
    """

    randomized = True
    __test__ = False  # not a pytest class, despite the name

    def __init__(self, p: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = _check_fraction("dro", "the drop rate p", p, zero_ok=True, one_ok=False)
        self.generator = _check_generator("dro", generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep.mul_(1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class GaussianNoise(nn.Module):
    """Additive activation noise (RNA): ``h + eta``, ``eta ~ N(0, s^2)`` per entry, s absolute.

    Shapes: any (B, ...) in and out.
    """

    randomized = True

    def __init__(self, s: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.s = _check_std("rna", s)
        self.generator = _check_generator("rna", generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.s * _randn(x, self.generator)

    def extra_repr(self) -> str:
        return f"s={self.s:g}"


class GaussianScaling(nn.Module):
    """Multiplicative activation noise (RSA): ``eta * h``, ``eta ~ N(1, s^2)`` per entry.

    Shapes: any (B, ...) in and out.
    """

    randomized = True

    def __init__(self, s: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.s = _check_std("rsa", s)
        self.generator = _check_generator("rsa", generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.s * _randn(x, self.generator))

    def extra_repr(self) -> str:
        return f"s={self.s:g}"


# ---------------------------------------------------------------------------------------------
# weight defenses: forward(W) -> the weight the layer uses, computed at every layer forward


class NoisyWeights(nn.Module):
    """RNW weight defense: ``W + eta``, ``eta ~ N(0, s^2)`` per entry, s absolute."""

    randomized = True

    def __init__(self, s: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.s = _check_std("rnw", s)
        self.generator = _check_generator("rnw", generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.s * _randn(weight, self.generator)

    def extra_repr(self) -> str:
        return f"s={self.s:g}"


class ScaledWeights(nn.Module):
    """RSW weight defense: ``eta * W``, ``eta ~ N(1, s^2)`` per entry."""

    randomized = True

    def __init__(self, s: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.s = _check_std("rsw", s)
        self.generator = _check_generator("rsw", generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (1 + self.s * _randn(weight, self.generator))

    def extra_repr(self) -> str:
        return f"s={self.s:g}"


class PrunedWeights(nn.Module):
    """DWP weight defense: ``W * mask``, the mask keeping the ``round(keep * numel)`` (at
    least 1) entries of largest ``|W|`` of the weight given at construction. The mask is a
    non-persistent buffer (it follows ``.to()``, it is not saved)."""

    randomized = False

    def __init__(self, weight: torch.Tensor, keep: float) -> None:
        super().__init__()
        self.keep = _check_fraction("dwp", "the kept fraction keep", keep)
        flat = weight.detach().abs().flatten()
        self.kept = max(1, math.floor(self.keep * flat.numel() + 0.5))
        mask = torch.zeros_like(flat)
        mask[flat.topk(self.kept).indices] = 1
        self.register_buffer("mask", mask.view_as(weight), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"keep={self.keep:g}, kept={self.kept}/{self.mask.numel()}"


class StochasticPrunedWeights(nn.Module):
    """SWP weight defense: SAP over the entries of the whole weight tensor (one map),
    ``r = round(frac * numel)`` draws; see :func:`robustact.defenses.sap`."""

    randomized = True

    def __init__(self, frac: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.frac = check_frac(frac)
        self.generator = _check_generator("swp", generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return sap(weight.reshape(1, -1), self.frac, generator=self.generator).view_as(weight)

    def extra_repr(self) -> str:
        return f"frac={self.frac:g}"


# ---------------------------------------------------------------------------------------------
# the activation wrapper, and state_dict hooks that keep the undefended model's keys


class DefendedActivation(nn.Module):
    """An activation followed by a defense layer: ``forward(x) = defense(act(x))``.

    ``state_dict()`` shows only ``act``'s entries, under this module's own prefix (as if the
    wrapper were not there), and ``load_state_dict`` accepts them so.
    Shapes: those of ``act``.
    """

    def __init__(self, act: nn.Module, defense: nn.Module, *, name: str) -> None:
        super().__init__()
        self.act = act
        self.defense = defense
        self.defense_name = name
        self.register_state_dict_post_hook(_drop_wrapper_level)
        self.register_load_state_dict_pre_hook(_add_wrapper_level)

    @property
    def randomized(self) -> bool:
        return bool(getattr(self.defense, "randomized", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense(self.act(x))

    def extra_repr(self) -> str:
        return f"defense={self.defense_name}"


def _retitle(state_dict: dict[str, Any], prefix: str, rename: Callable[[str], str | None]) -> None:
    """Rename (or drop, when ``rename`` returns None) the entries of one module, which
    ``state_dict()`` has just written at the end of ``state_dict``; their order is kept."""
    items = [(k, state_dict.pop(k)) for k in [k for k in state_dict if k.startswith(prefix)]]
    for key, value in items:
        new = rename(key)
        if new is not None:
            state_dict[new] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        own = prefix[:-1]
        for key in [k for k in metadata if k != own and (k + ".").startswith(prefix)]:
            value = metadata.pop(key)
            new = rename(key + ".")
            if new is not None:
                metadata[new[:-1]] = value


def _drop_wrapper_level(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                        local_metadata: dict[str, Any]) -> None:
    inner, defense = prefix + "act.", prefix + "defense."

    def rename(key: str) -> str | None:
        if key.startswith(defense):
            return None
        return prefix + key[len(inner):] if key.startswith(inner) else key

    _retitle(state_dict, prefix, rename)


def _add_wrapper_level(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                       *args: Any) -> None:
    # load_state_dict works on its own copy of the dict, so renaming in place is safe
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if not rest.startswith(("act.", "defense.")):
            state_dict[prefix + "act." + rest] = state_dict.pop(key)


def _perturb_weight(layer: nn.Module, args: Any) -> None:
    # an instance attribute is found before Module.__getattr__ looks into _parameters
    layer.__dict__["weight"] = layer.weight_defense(layer._parameters["weight"])


def _restore_weight(layer: nn.Module, args: Any, output: Any) -> None:
    layer.__dict__.pop("weight", None)


# ---------------------------------------------------------------------------------------------
# the registry and apply / remove


@dataclass(frozen=True)
class DefenseSpec:
    """A registered post hoc defense: where it acts, how to build one site's module, and what
    its parameters are (``required`` must be given; the others have defaults)."""

    name: str
    site: str
    build: Callable[..., nn.Module]
    required: tuple[str, ...]
    summary: str

    def parameters(self) -> list[str]:
        names = list(inspect.signature(self.build).parameters)
        return names[1:] if self.site == WEIGHT_SITE else names


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def _register(name: str, site: str, build: Callable[..., nn.Module], required: tuple[str, ...],
              summary: str) -> None:
    DEFENSES.add(name, DefenseSpec(name, site, build, required, summary))


_register("sap", ACTIVATION_SITE, SAP, (),
          "Stochastic Activation Pruning after every activation (frac=1.0: SAP-100)")
_register("dro", ACTIVATION_SITE, TestTimeDropout, ("p",),
          "dropout with drop rate p after every activation, also in eval mode")
_register("rna", ACTIVATION_SITE, GaussianNoise, ("s",),
          "additive N(0, s^2) noise on every activation map")
_register("rsa", ACTIVATION_SITE, GaussianScaling, ("s",),
          "multiplicative N(1, s^2) noise on every activation map")
_register("rnw", WEIGHT_SITE, lambda weight, s, *, generator=None: NoisyWeights(
    s, generator=generator), ("s",), "additive N(0, s^2) noise on every conv/linear weight")
_register("rsw", WEIGHT_SITE, lambda weight, s, *, generator=None: ScaledWeights(
    s, generator=generator), ("s",), "multiplicative N(1, s^2) noise on every conv/linear weight")
_register("dwp", WEIGHT_SITE, lambda weight, keep: PrunedWeights(weight, keep), ("keep",),
          "keep the fraction keep of largest-magnitude entries of every conv/linear weight")
_register("swp", WEIGHT_SITE, lambda weight, frac, *, generator=None: StochasticPrunedWeights(
    frac, generator=generator), ("frac",), "SAP over the entries of every conv/linear weight")


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
    return isinstance(module, SAP | TestTimeDropout | GaussianNoise | GaussianScaling
                      | DefendedActivation)


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
