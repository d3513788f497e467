"""Row-wise k-th largest value: the per-sample threshold of k-Winners-Take-All.

``kth_largest(x, k)[r]`` is the k-th largest entry of row ``r`` of a 2-D tensor, exactly (it is
one of the row's values, copied, never computed), with the ordering of
``torch.topk(x, k).values[:, -1]``: NaN ranks above ``+inf`` (a row with at least k NaNs gives
NaN), then ``+inf``, finite values, ``-inf``. ``+0.0`` and ``-0.0`` are equal, so when the answer
is a zero either sign may come back.

Backends, chosen by :func:`backend_for`:

``"native"``
    CPU float32 with the compiled extension ``robustact.activations._select``: sample-based
    bracketing plus a vectorised quickselect (short rows with a small k: a bound from the
    row's lane maxima, then rank counting, on AVX-512), GIL released; 2-4x faster than
    ``np.partition`` in bench/select_kernel.py. Rows are split over up to
    ``torch.get_num_threads()`` threads of PyTorch's own intra-op pool (the OpenMP team
    ``at::parallel_for`` uses; the extension starts no thread), or run on the calling thread
    when the job is small or that team is busy with another call.
``"numpy"``
    Other CPU dtypes, or when the extension was not built (``NATIVE_AVAILABLE`` is False; the
    package then still works, only slower): ``np.partition`` (float16/bfloat16 are selected in
    float32, which is exact since the result is one of the inputs).
``"torch"``
    Non-CPU tensors (CUDA, MPS, ...): ``torch.kthvalue`` on the device, no host sync.

The selection never builds an autograd graph (it runs on detached values under ``no_grad``).

``kwta_mask(x, k)`` is the k-WTA mask itself, ``(x >= kth_largest(x, k)[:, None])`` as 0/1 values
in ``x``'s dtype; the native backend computes it in the same call as the selection (one
compare-and-store pass per row while the row is in cache), with no extra torch ops. NaN entries
get 0, except in a row whose threshold is NaN (at least k NaNs), where exactly the NaN entries
get 1 (they are the entries ranked at or above the threshold); a threshold of ``-inf`` gives 1 at
every non-NaN entry.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

try:  # built by setup.py; optional so that installs without a C++ compiler still work
    from robustact.activations import _select as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None

__all__ = ["BACKENDS", "NATIVE_AVAILABLE", "backend_for", "kth_largest", "kwta_mask"]

NATIVE_AVAILABLE: bool = _native is not None
BACKENDS = ("native", "numpy", "torch")

# np.partition cannot take these directly; their values are exactly representable in float32.
_SELECT_IN_FLOAT32 = (torch.float16, torch.bfloat16)
# bound once for kwta_mask's hot path
_FLOAT32 = torch.float32
_empty_like = torch.empty_like
_num_threads = torch.get_num_threads


def backend_for(x: torch.Tensor) -> str:
    """Name of the backend :func:`kth_largest` uses for ``x``: "native", "numpy" or "torch"."""
    if x.device.type != "cpu":
        return "torch"
    if x.dtype == torch.float32 and NATIVE_AVAILABLE:
        return "native"
    return "numpy"


def kth_largest(x: torch.Tensor, k: int, *, backend: str | None = None) -> torch.Tensor:
    """The k-th largest value of each row of the 2-D tensor ``x``, shape ``(rows,)``.

    The result has ``x``'s dtype and device. ``1 <= k <= x.shape[1]`` (ValueError otherwise).
    ``backend`` (None: automatic, see :func:`backend_for`) forces "native", "numpy" or
    "torch"; it exists for tests and benchmarks.
    """
    k, chosen = _validate(x, k, backend)
    with torch.no_grad():
        x = x.detach()
        if chosen == "native":
            return _kth_largest_native(x, k)
        if chosen == "numpy":
            return _kth_largest_numpy(x, k)
        return _kth_largest_torch(x, k)


def kwta_mask(x: torch.Tensor, k: int, *, backend: str | None = None) -> torch.Tensor:
    """The k-WTA mask of the 2-D tensor ``x``: 1 where ``x >= kth_largest(x, k)[:, None]``, else 0.

    Shape ``(rows, n)``, ``x``'s dtype and device, no autograd graph. NaN entries get 0, except
    in a row with at least k NaNs (its threshold is NaN): there exactly the NaN entries get 1.
    Ties at the threshold are all kept, so a row may have more than k ones. Arguments and errors
    as in :func:`kth_largest`. The native backend (CPU float32) does selection and mask in one
    call; the others compute the thresholds with :func:`kth_largest`, then compare.
    """
    # Hot path (called per layer per batch): CPU float32 2-D, automatic backend. Only the checks
    # the extension cannot do itself: it checks k (an integer, 1 <= k <= n, the ValueError of
    # _validate) and n. At a dense layer's sizes every Python step counts (~0.3-1 us each).
    if (
        backend is None
        and _native is not None
        and isinstance(x, torch.Tensor)
        and x.dtype is _FLOAT32
        and x.is_cpu
        and x.dim() == 2
    ):
        x = x.contiguous()
        # x is C-contiguous float32 now: empty_like gives the same layout, ~1 us faster than
        # torch.empty((rows, n), dtype=...); it never requires grad.
        mask = _empty_like(x)
        rows, n = x.shape
        if n == 0:  # the extension's message would be about n
            raise ValueError(f"k must satisfy 1 <= k <= n = 0, got {k}")
        _native.kwta_mask(x.data_ptr(), mask.data_ptr(), 0, rows, n, k, _num_threads())
        return mask

    k, chosen = _validate(x, k, backend)
    with torch.no_grad():
        x = x.detach()
        if chosen == "native":
            return _kwta_mask_native(x, k)
        select_fn = _kth_largest_numpy if chosen == "numpy" else _kth_largest_torch
        t = select_fn(x, k).unsqueeze(1)
        keep = x >= t
        if x.is_floating_point():  # NaN threshold: keep exactly the NaN entries
            keep |= x.isnan() & t.isnan()
        return keep.to(x.dtype)


def _validate(x: torch.Tensor, k: int, backend: str | None) -> tuple[int, str]:
    """Checks the arguments of kth_largest / kwta_mask; returns (k, backend to use)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (rows, n), got shape {tuple(x.shape)}")
    n = x.shape[1]
    k = operator.index(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n}, got {k}")
    if x.is_complex():
        raise TypeError("complex tensors have no ordering")
    chosen = backend_for(x) if backend is None else backend
    if chosen not in BACKENDS:
        raise ValueError(f"unknown backend {chosen!r}; expected one of {BACKENDS}")
    if chosen != "torch" and x.device.type != "cpu":
        raise ValueError(f"backend {chosen!r} needs a CPU tensor, got device {x.device}")
    return k, chosen


def _require_native(x: torch.Tensor) -> None:
    if _native is None:
        raise RuntimeError(
            "the native selection kernel (robustact.activations._select) was not compiled; "
            "reinstall with a C++ compiler available, or use backend='numpy'"
        )
    if x.dtype != torch.float32:
        raise ValueError(f"the native backend takes float32, got {x.dtype}")


def _kth_largest_native(x: torch.Tensor, k: int) -> torch.Tensor:
    _require_native(x)
    rows, n = x.shape
    x = x.contiguous()
    out = torch.empty(rows, dtype=torch.float32)
    if rows:
        _native.kth_largest(x.data_ptr(), out.data_ptr(), rows, n, k, torch.get_num_threads())
    return out


def _kwta_mask_native(x: torch.Tensor, k: int) -> torch.Tensor:
    _require_native(x)
    rows, n = x.shape
    x = x.contiguous()
    mask = torch.empty((rows, n), dtype=torch.float32)
    if rows:
        _native.kwta_mask(x.data_ptr(), mask.data_ptr(), 0, rows, n, k, torch.get_num_threads())
    return mask


def _kth_largest_numpy(x: torch.Tensor, k: int) -> torch.Tensor:
    n = x.shape[1]
    src = x.float() if x.dtype in _SELECT_IN_FLOAT32 else x
    # NaN sorts last in np.partition, i.e. as the largest value, like torch.topk.
    values = np.partition(src.numpy(), n - k, axis=1)[:, n - k]
    return torch.from_numpy(np.ascontiguousarray(values)).to(x.dtype)


def _kth_largest_torch(x: torch.Tensor, k: int) -> torch.Tensor:
    n = x.shape[1]
    try:
        return torch.kthvalue(x, n - k + 1, dim=1).values
    except NotImplementedError:  # a device without kthvalue (e.g. some MPS builds)
        return torch.sort(x, dim=1, descending=True).values[:, k - 1]
