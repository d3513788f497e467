"""The k-Winners-Take-All activation (Xiao, Zhong, Zheng, ICLR 2020): functional form and module.

``phi_k(y)_j = y_j`` if ``y_j`` is among the k largest entries of ``y``, else 0.

Conventions (also in the README, "k-WTA: the choices made"):

- **mode** ``"volume"`` (the paper's, default): one vector per sample, all non-batch dims
  (C*H*W for a conv layer, the features of a dense layer). ``"channel"``: one vector per
  (sample, channel) over H*W; a 2-D (dense) input has no spatial extent and uses volume mode.
- **k from a ratio** ``gamma`` uses floor, ``k = floor(gamma * N)`` as in the original PyTorch
  code and the paper's formula; ``rounding="ceil"`` is offered. A ratio that would give k = 0
  raises :class:`~robustact.errors.ConfigError` rather than silently zeroing a layer.
- **ties** at the threshold are all kept (every value >= the k-th largest), as in the original,
  so a sample with ties may keep more than k units.
- **gradient** flows only through retained units (the mask is a step function).
- **speed**: the per-sample threshold is a linear-time selection
  in a compiled kernel that also writes the 0/1 mask in the same pass
  (:func:`robustact.activations.select.kwta_mask`; NumPy / ``torch.kthvalue`` fallbacks), not a
  sort or the topk-repeat-permute formulation of the original code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.activations.registry import ACTIVATIONS
from robustact.activations.select import kth_largest, kwta_mask
from robustact.errors import ConfigError

MODES = ("volume", "channel")
ROUNDINGS = ("floor", "ceil")


def winners_from_ratio(ratio: float, n: int, rounding: str = "floor") -> int:
    """Number of retained units k for ``n`` units at sparsity ratio ``ratio``; never 0."""
    exact = ratio * n
    # the epsilon absorbs float noise such as 0.1 * 1280 = 128.00000000000003
    k = math.ceil(exact - 1e-9) if rounding == "ceil" else math.floor(exact + 1e-9)
    if k < 1:
        raise ConfigError(
            f"k-WTA ratio {ratio:g} keeps no unit of a layer with {n} units per sample "
            f"({rounding}({ratio:g} * {n}) = 0); use a ratio >= {1 / n:.4g} or rounding='ceil'"
        )
    return min(k, n)


def _kwta_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of a (R, n) tensor: keep the values >= the row's k-th largest, zero the others.

    The 0/1 mask carries no autograd graph (``kwta_mask`` never records one), so
    ``rows * mask`` sends gradient only through the kept units, computed by autograd's own
    multiply backward (no Python callback).
    """
    return rows * kwta_mask(rows, k)


def kwta(
    x: torch.Tensor,
    k: int | None = None,
    *,
    ratio: float | None = None,
    mode: str = "volume",
    rounding: str = "floor",
) -> torch.Tensor:
    """Functional k-WTA: a fixed ``k`` per vector, or k from ``ratio`` (see the module docstring).

    Shapes: x (B, ...), e.g. (B, N) or (B, C, H, W); the output has the shape of x.
    """
    rows, k = _rows_and_k(x, k, ratio, mode, rounding)
    out = _kwta_rows(rows, k)
    return out if rows is x else out.view_as(x)


def kwta_surrogate(
    x: torch.Tensor,
    k: int | None = None,
    *,
    ratio: float | None = None,
    mode: str = "volume",
    rounding: str = "floor",
    temperature: float = 0.1,
) -> torch.Tensor:
    """Smooth stand-in for :func:`kwta` used on the BPDA backward pass (see
    :meth:`KWTA.bpda_surrogate`): ``x * sigmoid((x - t) / tau)`` per vector (``mode`` as in
    :func:`kwta`), ``t`` the vector's k-th largest value and ``tau = temperature * std(vector)``
    (population std, floored at 1e-6), both detached. Shape of x in and out.
    """
    if not (isinstance(temperature, int | float) and math.isfinite(temperature)
            and temperature > 0):
        raise ConfigError(f"k-WTA bpda_temperature must be a number > 0, got {temperature!r}")
    rows, k = _rows_and_k(x, k, ratio, mode, rounding)
    with torch.no_grad():
        detached = rows.detach()
        t = kth_largest(detached, k).unsqueeze(1)
        tau = (temperature * detached.std(1, correction=0, keepdim=True)).clamp_min(1e-6)
    out = rows * torch.sigmoid((rows - t) / tau)
    return out.reshape(x.shape)


def _rows_and_k(x: torch.Tensor, k: int | None, ratio: float | None, mode: str,
                rounding: str) -> tuple[torch.Tensor, int]:
    """The (R, n) vectors k-WTA works on and the validated number of winners per vector."""
    if x.dim() < 2:
        raise ConfigError(f"k-WTA needs a batched input (B, ...), got shape {tuple(x.shape)}")
    rows = _as_rows(x, mode)
    n = rows.shape[1]
    if k is None:
        if ratio is None:
            raise ConfigError("k-WTA needs a ratio (e.g. 0.2) or a fixed k")
        return rows, winners_from_ratio(ratio, n, rounding)
    if not 1 <= k <= n:
        raise ConfigError(
            f"k-WTA k={k} is out of range for a layer with {n} units per {_unit(mode, x)}; "
            f"use 1 <= k <= {n} or a ratio"
        )
    return rows, k


def _as_rows(x: torch.Tensor, mode: str) -> torch.Tensor:
    if x.dim() == 2:  # a dense layer: already one row per sample (no extra autograd node)
        return x
    if mode == "channel":
        return x.reshape(x.shape[0] * x.shape[1], -1)
    return x.reshape(x.shape[0], -1)


def _unit(mode: str, x: torch.Tensor) -> str:
    return "channel" if mode == "channel" and x.dim() > 2 else "sample"


@ACTIVATIONS.register("kwta", aliases=("k_wta", "kwinners"))
class KWTA(nn.Module):
    """k-Winners-Take-All activation.

    Args:
        ratio: sparsity ratio gamma in (0, 1]; k = floor(gamma * N) per vector. Changeable during
            training (``module.ratio = 0.15`` or :func:`set_kwta_ratio`).
        k: a fixed number of winners instead of a ratio (takes precedence).
        mode: ``"volume"`` (per sample over C*H*W, the paper's) or ``"channel"`` (per channel).
        rounding: ``"floor"`` (original code, default) or ``"ceil"``.

    Shapes: input (B, N) or (B, C, H, W) (any (B, ...)); output the same shape.
    """

    def __init__(
        self,
        ratio: float | None = 0.2,
        *,
        k: int | None = None,
        mode: str = "volume",
        rounding: str = "floor",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"k-WTA mode must be one of {', '.join(MODES)}, got {mode!r}")
        if rounding not in ROUNDINGS:
            raise ConfigError(f"k-WTA rounding must be floor or ceil, got {rounding!r}")
        if k is None and ratio is None:
            raise ConfigError("k-WTA needs a ratio (e.g. 0.2) or a fixed k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"k-WTA k must be a positive integer, got {k!r}")
        # units per vector -> k of a dense input; emptied whenever k, ratio or rounding change
        self._dense_k: dict[int, int] = {}
        self.mode = mode
        self.rounding = rounding
        self.k = k
        self._ratio: float | None = None
        if ratio is not None:
            self.ratio = ratio

    @property
    def ratio(self) -> float | None:
        return self._ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"k-WTA ratio must be in (0, 1], got {value:g}")
        self._ratio = value
        self._dense_k.clear()

    @property
    def k(self) -> int | None:
        return self._k

    @k.setter
    def k(self, value: int | None) -> None:
        self._k = value
        self._dense_k.clear()

    @property
    def rounding(self) -> str:
        return self._rounding

    @rounding.setter
    def rounding(self, value: str) -> None:
        self._rounding = value
        self._dense_k.clear()

    def num_winners(self, n: int) -> int:
        """k for a vector of ``n`` units."""
        if self._k is not None:
            return self._k
        assert self._ratio is not None
        return winners_from_ratio(self._ratio, n, self._rounding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a dense layer: at its small sizes every Python step is a cost
            k = self._dense_k.get(x.shape[1])
            if k is not None:
                return x * kwta_mask(x, k)
        out = kwta(x, self._k, ratio=self._ratio, mode=self.mode, rounding=self._rounding)
        if x.dim() == 2:  # k was valid for this width: remember it
            self._dense_k[x.shape[1]] = self.num_winners(x.shape[1])
        return out

    #: temperature of :meth:`bpda_surrogate`, relative to the per-vector std of the input
    #: (a plain attribute, not a constructor argument: ``layer.bpda_temperature = 0.05``)
    bpda_temperature: float = 0.1

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable stand-in for this layer, used by :class:`robustact.attacks.BPDA`.

        ``x * sigmoid((x - t) / tau)`` per vector (``mode`` as in forward), ``t`` the vector's
        k-th largest value (the forward threshold) and ``tau = bpda_temperature * std(vector)``
        (default 0.1 std; both detached). BPDA keeps the forward value of the exact k-WTA and
        takes the gradient of this function: ``sigmoid(z) + x * sigmoid'(z) / tau`` with
        ``z = (x - t) / tau``, i.e. ~1 for clear winners, ~0 far below the threshold and
        nonzero for units within a few tau of it on either side, so an attack sees which
        units a small step would switch on or off. The alternative (the identity on the
        retained pattern) is the exact gradient of the current linear piece, which the plain
        backward already gives; BPDA with it would change nothing, hence the smooth choice.
        A lower temperature approaches the hard mask (and its masked gradient); a higher one
        smooths over more units.
        """
        return kwta_surrogate(x, self.k, ratio=self._ratio, mode=self.mode,
                              rounding=self.rounding, temperature=self.bpda_temperature)

    def extra_repr(self) -> str:
        size = f"k={self.k}" if self.k is not None else f"ratio={self._ratio:g}"
        return f"{size}, mode={self.mode}, rounding={self.rounding}"

    # The ratio is a Python float (reading a tensor buffer in forward would cost a host sync on
    # GPUs); extra state puts it into state_dict so checkpoints keep a ratio changed in training.
    def get_extra_state(self) -> dict[str, Any]:
        return {"ratio": self._ratio, "k": self.k, "mode": self.mode, "rounding": self.rounding}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.k = state.get("k")
        self.mode = state.get("mode", self.mode)
        self.rounding = state.get("rounding", self.rounding)
        if state.get("ratio") is not None:
            self.ratio = state["ratio"]


def set_kwta_ratio(model: nn.Module, ratio: float) -> int:
    """Set the ratio of every ratio-based :class:`KWTA` in ``model``; returns how many changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, KWTA) and module.k is None:
            module.ratio = ratio
            changed += 1
    return changed


def kwta_ratios(model: nn.Module) -> list[float]:
    """The ratios of the ratio-based k-WTA modules of ``model`` (in module order)."""
    return [m.ratio for m in model.modules() if isinstance(m, KWTA) and m.ratio is not None]
