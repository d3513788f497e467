"""The modules that post hoc defenses insert into a network.

Noise, dropout and pruning layers, and the activation wrapper that keeps the undefended model's
``state_dict`` keys.

Activation-site layers act on an activation map ``h``; weight defenses map a stored weight ``W``
to the weight a layer uses in one forward (:mod:`robustact.defenses.posthoc` inserts both). The
definitions (seed 004: section 4.1 for DRO, appendix B for the others; ``j`` indexes the entries
of one weight tensor ``W`` or one activation map ``h``):

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

Every noise variable is drawn independently per entry, in train and eval mode, from
``generator`` (a ``torch.Generator`` on the model's device) or else the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustact.defenses.sap import check_frac, sap
from robustact.errors import ConfigError


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


class _GaussianLayer(nn.Module):
    """Gaussian noise of standard deviation ``s`` (a number >= 0) drawn per entry; ``kind`` is
    the defense's name in error messages."""

    randomized = True
    kind = ""

    def __init__(self, s: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.s = _check_std(self.kind, s)
        self.generator = _check_generator(self.kind, generator)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """``s * eta`` with ``eta ~ N(0, 1)`` per entry, shaped like ``like``."""
        return self.s * torch.randn(like.shape, generator=self.generator, dtype=like.dtype,
                                    device=like.device)

    def extra_repr(self) -> str:
        return f"s={self.s:g}"


class GaussianNoise(_GaussianLayer):
    """Additive activation noise (RNA): ``h + eta``, ``eta ~ N(0, s^2)`` per entry, s absolute.

    Shapes: any (B, ...) in and out.
    """

    kind = "rna"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.noise(x)


class GaussianScaling(_GaussianLayer):
    """Multiplicative activation noise (RSA): ``eta * h``, ``eta ~ N(1, s^2)`` per entry.

    Shapes: any (B, ...) in and out.
    """

    kind = "rsa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.noise(x))


# ---------------------------------------------------------------------------------------------
# weight defenses: forward(W) -> the weight the layer uses, computed at every layer forward


class NoisyWeights(_GaussianLayer):
    """RNW weight defense: ``W + eta``, ``eta ~ N(0, s^2)`` per entry, s absolute."""

    kind = "rnw"

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.noise(weight)


class ScaledWeights(_GaussianLayer):
    """RSW weight defense: ``eta * W``, ``eta ~ N(1, s^2)`` per entry."""

    kind = "rsw"

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (1 + self.noise(weight))


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
