"""The KAF activation modules: their parameters, initialisation, lazy creation and checkpoints.

Kernel-based activation functions, KAF (Scardapane, Van Vaerenbergh, Totaro, Uncini 2019):

``KAF(x) = sum_{i=1..D} alpha_i * exp(-gamma * (x - d_i) ** 2)``, one set of ``D`` mixing
coefficients ``alpha`` per channel (input (B, C, H, W) or (B, C, L): per C) or per unit
(input (B, N): per N).

Conventions (the seed is the KAF thesis, ``seeds/002_*``; REFERENCE.md section 2):

- **dictionary** ``d``: ``D`` points (default 20) evenly spaced over ``[-boundary, boundary]``,
  step ``Delta = 2 * boundary / (D - 1)``; ``boundary=3.0`` as in the thesis code (default),
  ``boundary=4.0`` as in the reference PyTorch code.
- **bandwidth** ``gamma="thesis"``: ``1 / (6 Delta^2)`` (default); ``"reference"``:
  ``1 / (8 Delta^2)`` (the reference code's ``sigma = 2 Delta``); or any float > 0.
- **init** ``"normal"``: ``alpha ~ N(0, init_std^2)``, ``init_std=0.8`` (reference code), drawn
  from torch's global RNG (seed it with ``torch.manual_seed``). The thesis code (TF2/Keras)
  used Keras' ``'random_normal'`` initializer, std 0.05 (:data:`THESIS_INIT_STD`): with std
  0.8 a small CNN under fast adversarial training at a peak lr of 0.1 stalls at chance (loss
  2.30 from the lr peak on), with 0.05 it trains (``configs/kaf/*.yaml`` use 0.05).
  ``"relu"``, ``"elu"``, ``"swish"`` or a callable ``f``: ridge regression
  ``alpha = (K + ridge_eps I)^-1 f(d)`` with ``K_ij = exp(-gamma (d_i - d_j)^2)``, the same
  coefficients for every channel (``ridge_eps=1e-4``; the thesis code used 1e-6, the
  reference code 1e-5). Outside the dictionary range every KAF decays to 0 (a
  ridge-initialised ``kaf_relu`` is close to ReLU only on ``[-boundary, boundary]``).
- **kaf_free** (``trainable_dict=True``): the dictionary and the bandwidth are trained too, per
  channel as in the thesis code (``Kaf(moving=True)``): parameters ``dictionary`` (C, D),
  initialised to the grid, and ``gamma`` (C,), initialised to the chosen bandwidth. This about
  doubles the KAF parameters (2 C D + C instead of C D), as the thesis says. ``gamma`` is
  trained as is (no positivity constraint, like the thesis code); a step that makes it <= 0
  breaks the layer, so keep learning rates moderate.

**Weight decay.** The training loop applies the optimizer's weight decay to every parameter,
so ``alpha`` is L2-regularised towards the zero function (the paper notes that KAFs admit the
usual regularisers; an early version of the thesis code had an L2 of 1e-3 on alpha, the final
one none). For ``kaf_free``
the same decay also pulls the dictionary points towards 0 and ``gamma`` towards 0 (wider
kernels); put ``dictionary`` and ``gamma`` in a parameter group without weight decay if that
is not wanted.

**Deep networks.** The thesis reports exploding gradients (NaN from the first iteration) when
training a ResNet-56 with KAFs, while ResNet-20 trained fine; it therefore used ResNet-20. Expect
trouble beyond ~50 layers; monitor gradient norms (or clip them) there.

**Lazy parameters.** With ``num_parameters=None`` (what models get, since they create one
activation per site with a zero-argument factory) the parameters are created at the first
forward from ``input.shape[1]`` (``torch.nn.modules.lazy.LazyModuleMixin``). Call
:func:`initialize_lazy` (one no-grad forward in eval mode) **before** building the optimizer,
counting parameters or copying the model for an EMA; ``load_state_dict`` into a fresh,
un-materialised model works (the shapes come from the checkpoint). A KAF module belongs to one
activation site: an input with another channel count raises :class:`ConfigError`.

**Computation** (chunked custom autograd functions that save only the input, a factorised
evaluation on the evenly spaced grid, the direct sum for ``kaf_free``): see
:mod:`robustact.activations.kaf_kernels`, which also holds the functional forms :func:`kaf`,
:func:`kaf_general` and :func:`kaf_naive` (importable from here too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.module import _EXTRA_STATE_KEY_SUFFIX
from torch.nn.parameter import UninitializedParameter, is_lazy

from robustact.activations.kaf_kernels import (
    GAMMA_RULES,
    dictionary_grid,
    kaf,
    kaf_general,
    kaf_naive,
    resolve_gamma,
)
from robustact.activations.registry import ACTIVATIONS
from robustact.errors import ConfigError

__all__ = [
    "GAMMA_RULES", "INITS", "KAF", "KAFELU", "KAFFree", "KAFReLU", "KAFSwish", "THESIS_INIT_STD",
    "dictionary_grid", "initialize_lazy", "kaf", "kaf_general", "kaf_naive", "resolve_gamma",
    "ridge_coefficients",
]

#: std of the random-normal init in the thesis code (Keras' ``'random_normal'`` default)
THESIS_INIT_STD = 0.05

#: named initialisations: random normal, or ridge regression to one of these functions
INIT_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "elu": F.elu, "swish": F.silu,
}
INITS = ("normal", *INIT_FUNCTIONS)


# --------------------------------------------------------------------------- ridge init


def ridge_coefficients(
    f: str | Callable[[torch.Tensor], torch.Tensor],
    *,
    D: int = 20,
    boundary: float = 3.0,
    gamma: str | float = "thesis",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Mixing coefficients whose KAF approximates ``f`` on the dictionary, shape (D,), float64.

    ``alpha = (K + eps I)^-1 t`` with ``K_ij = exp(-gamma (d_i - d_j)^2)`` and ``t_i = f(d_i)``.
    ``f`` is ``"relu"``, ``"elu"``, ``"swish"`` or a callable taking and returning a (D,)
    float64 tensor.
    """
    if isinstance(f, str):
        if f not in INIT_FUNCTIONS:
            raise ConfigError(f"KAF ridge target must be one of {', '.join(INIT_FUNCTIONS)} or "
                              f"a callable, got {f!r}")
        f = INIT_FUNCTIONS[f]
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"KAF ridge_eps must be a number >= 0, got {eps!r}")
    g = resolve_gamma(gamma, D, boundary)
    d = dictionary_grid(D, boundary, dtype=torch.float64)
    t = torch.as_tensor(f(d), dtype=torch.float64).reshape(-1)
    if t.shape != (D,):
        raise ConfigError(f"KAF init function must map the (D,) dictionary to (D,) values, "
                          f"got {tuple(t.shape)} for D={D}")
    kernel = torch.exp(-g * (d[:, None] - d[None, :]) ** 2)
    return torch.linalg.solve(kernel + eps * torch.eye(D, dtype=torch.float64), t)


# --------------------------------------------------------------------------- modules


@ACTIVATIONS.register("kaf")
class KAF(LazyModuleMixin, nn.Module):
    """Kernel-based activation function with per-channel mixing coefficients (registry: kaf).

    Args:
        num_parameters: channels C (dense layers: units N); None (default) creates the
            parameters lazily at the first forward from ``input.shape[1]``.
        D: dictionary size (>= 2), default 20.
        boundary: dictionary range [-boundary, boundary] (> 0); 3.0 thesis, 4.0 reference code.
        gamma: ``"thesis"`` 1/(6 Delta^2), ``"reference"`` 1/(8 Delta^2), or a number > 0.
        init: ``"normal"`` (N(0, init_std^2)), ``"relu"``, ``"elu"``, ``"swish"`` or a callable
            (ridge regression to that function on the dictionary, see the module docstring).
        trainable_dict: also train a per-channel dictionary (C, D) and bandwidth (C,)
            (``kaf_free``).
        ridge_eps: the ridge term eps of ``(K + eps I)^-1 t``.
        init_std: standard deviation of the normal init: 0.8 as the reference PyTorch code,
            :data:`THESIS_INIT_STD` (0.05) as the thesis code.

    Parameters: ``alpha`` (C, D); with ``trainable_dict`` also ``dictionary`` (C, D) and
    ``gamma`` (C,). Shapes: input (B, C, ...) ((B, C, H, W), (B, C, L), (B, N)); output the
    same shape and dtype.
    """

    alpha: nn.Parameter

    def __init__(
        self,
        num_parameters: int | None = None,
        *,
        D: int = 20,
        boundary: float = 3.0,
        gamma: str | float = "thesis",
        init: str | Callable[[torch.Tensor], torch.Tensor] = "normal",
        trainable_dict: bool = False,
        ridge_eps: float = 1e-4,
        init_std: float = 0.8,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.gamma_value = resolve_gamma(gamma, D, boundary)  # also checks D and boundary
        self.gamma_rule = gamma if isinstance(gamma, str) else None
        self.D = D
        self.boundary = float(boundary)
        if not (callable(init) or init in INITS):
            raise ConfigError(f"KAF init must be one of {', '.join(INITS)} or a callable, "
                              f"got {init!r}")
        if not (isinstance(ridge_eps, int | float) and math.isfinite(ridge_eps)
                and ridge_eps >= 0):
            raise ConfigError(f"KAF ridge_eps must be a number >= 0, got {ridge_eps!r}")
        if not (isinstance(init_std, int | float) and math.isfinite(init_std) and init_std > 0):
            raise ConfigError(f"KAF init_std must be a number > 0, got {init_std!r}")
        if num_parameters is not None and (isinstance(num_parameters, bool)
                                           or not isinstance(num_parameters, int)
                                           or num_parameters < 1):
            raise ConfigError(f"KAF num_parameters must be a positive integer or None, "
                              f"got {num_parameters!r}")
        self.init = init
        self.trainable_dict = bool(trainable_dict)
        self.ridge_eps = float(ridge_eps)
        self.init_std = float(init_std)
        factory = {"device": device, "dtype": dtype}
        names = ("alpha", "dictionary", "gamma") if self.trainable_dict else ("alpha",)
        for name in names:
            self.register_parameter(name, UninitializedParameter(**factory))
        if num_parameters is not None:
            self._materialize(num_parameters)

    @property
    def num_parameters(self) -> int | None:
        """Channels C, or None while the parameters are not created yet."""
        return None if is_lazy(self.alpha) else self.alpha.shape[0]

    def dictionary_points(self) -> torch.Tensor:
        """The fixed grid, shape (D,), on alpha's device (the initial value of ``kaf_free``'s)."""
        device = None if is_lazy(self.alpha) else self.alpha.device
        return dictionary_grid(self.D, self.boundary, device=device)

    def _materialize(self, channels: int) -> None:
        with torch.no_grad():
            self.alpha.materialize((channels, self.D))
            if self.trainable_dict:
                self.dictionary.materialize((channels, self.D))
                self.gamma.materialize((channels,))
        self.reset_parameters()

    def initialize_parameters(self, x: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            if x.dim() < 2:
                raise ConfigError(f"KAF needs a batched input (B, C, ...), got shape "
                                  f"{tuple(x.shape)}")
            self._materialize(x.shape[1])

    def reset_parameters(self) -> None:
        """Re-initialise alpha (normal or ridge) and, for kaf_free, the dictionary and gamma."""
        if self.has_uninitialized_params():
            return
        with torch.no_grad():
            if self.init == "normal":
                nn.init.normal_(self.alpha, std=self.init_std)
            else:
                coef = ridge_coefficients(self.init, D=self.D, boundary=self.boundary,
                                          gamma=self.gamma_value, eps=self.ridge_eps)
                self.alpha.copy_(coef.expand_as(self.alpha))
            if self.trainable_dict:
                self.dictionary.copy_(dictionary_grid(self.D, self.boundary,
                                                      dtype=torch.float64).expand_as(
                    self.dictionary))
                self.gamma.fill_(self.gamma_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainable_dict:
            return kaf_general(x, self.alpha, self.dictionary, self.gamma)
        return kaf(x, self.alpha, boundary=self.boundary, gamma=self.gamma_value)

    def extra_repr(self) -> str:
        channels = "lazy" if self.num_parameters is None else str(self.num_parameters)
        rule = f" ({self.gamma_rule})" if self.gamma_rule else ""
        init = self.init if isinstance(self.init, str) else getattr(self.init, "__name__", "f")
        text = (f"{channels}, D={self.D}, boundary={self.boundary:g}, "
                f"gamma={self.gamma_value:.4g}{rule}, init={init}")
        return text + (", trainable_dict=True" if self.trainable_dict else "")

    # D, boundary and gamma define the function but are no tensors (reading a tensor in forward
    # would cost a host sync on GPUs); extra state puts them into checkpoints.
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        # LazyModuleMixin's override saves parameters and buffers but drops the extra state
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _EXTRA_STATE_KEY_SUFFIX] = self.get_extra_state()

    def get_extra_state(self) -> dict[str, Any]:
        return {"D": self.D, "boundary": self.boundary, "gamma": self.gamma_value,
                "trainable_dict": self.trainable_dict}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if bool(state.get("trainable_dict", False)) != self.trainable_dict:
            raise ConfigError("KAF checkpoint and module disagree on trainable_dict (kaf_free vs "
                              "kaf); build the model with the checkpoint's activation")
        self.D = int(state.get("D", self.D))
        self.boundary = float(state.get("boundary", self.boundary))
        self.gamma_value = float(state.get("gamma", self.gamma_value))
        if self.gamma_value != resolve_gamma(self.gamma_rule or "thesis", self.D, self.boundary):
            self.gamma_rule = None


def _fixed(kwargs: dict[str, Any], name: str, **fixed: Any) -> dict[str, Any]:
    for key in fixed:
        if key in kwargs:
            raise ConfigError(f"{name} fixes {key}={fixed[key]!r}; use KAF({key}=...) instead")
    return {**kwargs, **fixed}


@ACTIVATIONS.register("kaf_relu")
class KAFReLU(KAF):
    """KAF ridge-initialised to ReLU on the dictionary (registry: kaf_relu); args as KAF."""

    def __init__(self, num_parameters: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_parameters, **_fixed(kwargs, "kaf_relu", init="relu"))


@ACTIVATIONS.register("kaf_elu")
class KAFELU(KAF):
    """KAF ridge-initialised to ELU on the dictionary (registry: kaf_elu); args as KAF."""

    def __init__(self, num_parameters: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_parameters, **_fixed(kwargs, "kaf_elu", init="elu"))


@ACTIVATIONS.register("kaf_swish", aliases=("kaf_silu",))
class KAFSwish(KAF):
    """KAF ridge-initialised to Swish/SiLU on the dictionary (registry: kaf_swish)."""

    def __init__(self, num_parameters: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_parameters, **_fixed(kwargs, "kaf_swish", init="swish"))


@ACTIVATIONS.register("kaf_free")
class KAFFree(KAF):
    """KAF whose per-channel dictionary (C, D) and bandwidth (C,) are trained too (kaf_free).

    Random normal init of alpha by default, as in the thesis; other args as KAF.
    """

    def __init__(self, num_parameters: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_parameters, **_fixed(kwargs, "kaf_free", trainable_dict=True))


# --------------------------------------------------------------------------- lazy init


def initialize_lazy(model: nn.Module, example_input: torch.Tensor) -> int:
    """Create the parameters of every lazy module of ``model`` (e.g. KAF) from one forward.

    Runs ``model(example_input)`` under ``no_grad`` in eval mode (BatchNorm statistics and
    dropout untouched), then restores each module's train/eval mode. A batch of one or two
    inputs on the model's device is enough. Call it before building the optimizer. Returns how
    many modules were materialised (0: nothing to do, no forward run).
    """
    lazy = [m for m in model.modules()
            if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()]
    if not lazy:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for module, training in modes:
            module.training = training
    return len(lazy)
