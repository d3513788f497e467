"""Row-wise k-th largest selection (robustact.activations.select): exactness on every backend."""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import sys

import numpy as np
import pytest
import torch

from robustact.activations import select
from robustact.activations.select import NATIVE_AVAILABLE, backend_for, kth_largest, kwta_mask

CPU_BACKENDS = (["native"] if NATIVE_AVAILABLE else []) + ["numpy", "torch"]
needs_native = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="native extension not built")


def reference(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(x, dim=1, descending=True).values[:, k - 1]


def assert_exact(got: torch.Tensor, x: torch.Tensor, k: int) -> None:
    want = reference(x, k)
    assert got.dtype == x.dtype and got.device == x.device and got.shape == want.shape
    # exact: no tolerance; NaN == NaN; +0.0 == -0.0
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def ks_for(n: int, gen: torch.Generator) -> list[int]:
    ks = {1, n, max(1, n // 10), max(1, n // 5), int(torch.randint(1, n + 1, (), generator=gen))}
    return sorted(ks)


def native_call(x: torch.Tensor, k: int, threads: int) -> torch.Tensor:
    """Calls the extension directly (bypassing the wrapper), with an explicit thread count."""
    x = x.contiguous()
    out = torch.empty(x.shape[0])
    select._native.kth_largest(x.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], k, threads)
    return out


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def native_isa(request):
    """Runs a test once per vector kernel this CPU supports; restores the best one after."""
    if not NATIVE_AVAILABLE:
        pytest.skip("native extension not built")
    try:
        select._native._set_isa(request.param)
    except ValueError:
        pytest.skip(f"{request.param} not supported on this CPU")
    yield request.param
    select._native._set_isa("best")


# ----------------------------------------------------------------------------------------------
# dispatch


def test_backend_dispatch():
    f32 = torch.zeros(2, 3)
    assert backend_for(f32) == ("native" if NATIVE_AVAILABLE else "numpy")
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.int64):
        assert backend_for(f32.to(dtype)) == "numpy"
    assert backend_for(torch.zeros(2, 3, device="meta")) == "torch"


@needs_native
def test_native_is_used_for_cpu_float32(monkeypatch):
    calls = []
    real = select._native.kth_largest

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(select._native, "kth_largest", spy)
    x = torch.randn(4, 100)
    assert_exact(kth_largest(x, 7), x, 7)
    assert len(calls) == 1
    assert calls[0][2:5] == (4, 100, 7)
    assert calls[0][5] == torch.get_num_threads()


def test_fallback_without_extension(monkeypatch):
    monkeypatch.setattr(select, "_native", None)
    monkeypatch.setattr(select, "NATIVE_AVAILABLE", False)
    x = torch.randn(5, 300)
    assert backend_for(x) == "numpy"
    assert_exact(kth_largest(x, 30), x, 30)
    with pytest.raises(RuntimeError, match="not compiled"):
        kth_largest(x, 30, backend="native")


def test_forced_backend_errors():
    x = torch.randn(3, 10)
    with pytest.raises(ValueError, match="unknown backend"):
        kth_largest(x, 2, backend="gpu")
    with pytest.raises(ValueError, match="CPU"):
        kth_largest(torch.zeros(3, 10, device="meta"), 2, backend="numpy")
    if NATIVE_AVAILABLE:
        with pytest.raises(ValueError, match="float32"):
            kth_largest(x.double(), 2, backend="native")


# ----------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_shapes(backend):
    gen = torch.Generator().manual_seed(1234)
    sizes = [1, 2, 3, 15, 16, 17, 31, 33, 100, 257, 1000, 2047, 2048, 2049, 4095, 4097, 12544]
    sizes += [int(v) for v in torch.randint(1, 50_001, (6,), generator=gen)] + [50_000]
    for n in sizes:
        rows = int(torch.randint(1, 65, (), generator=gen))
        rows = max(1, min(rows, 400_000 // n))
        x = torch.randn(rows, n, generator=gen) * 3
        for k in ks_for(n, gen):
            assert_exact(kth_largest(x, k, backend=backend), x, k)


def test_native_kernels_and_threads(native_isa):
    gen = torch.Generator().manual_seed(99)
    for n in (5, 64, 1500, 3000, 9000, 40_000):
        rows = max(2, min(48, 600_000 // n))
        x = torch.randn(rows, n, generator=gen)
        for k in ks_for(n, gen):
            want = reference(x, k)
            for threads in (1, 2, 3, 8):
                torch.testing.assert_close(native_call(x, k, threads), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_heavy_ties_and_constant_rows(backend):
    gen = torch.Generator().manual_seed(7)
    for n in (10, 2500, 20_000):
        ties = torch.randint(-3, 4, (12, n), generator=gen).float()
        const = torch.full((3, n), 2.5)
        relu = torch.randn(8, n, generator=gen).clamp_min(0)  # half the entries are exactly 0
        for x in (ties, const, relu):
            for k in sorted({1, 2, n // 3 + 1, n // 2, (2 * n) // 3, n - 1, n} - {0}):
                assert_exact(kth_largest(x, k, backend=backend), x, k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_structured_rows(backend):
    """Sorted, reversed, periodic and blockwise rows (unfriendly to sample-based brackets)."""
    n = 12_544
    i = torch.arange(n, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    x = torch.stack(
        [
            i,
            -i,
            i % 97,
            torch.where((i // 196) % 2 == 0, i, -i),
            torch.where(i < n - 5, torch.zeros(n), torch.full((n,), 1e30)),
            torch.randn(n, generator=gen).exp() * 1e-30,
            torch.randn(n, generator=gen) * 1e-40,  # subnormals
        ]
    )
    for k in (1, 5, 6, 1254, 2508, 6272, n - 1, n):
        assert_exact(kth_largest(x, k, backend=backend), x, k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_infinities(backend):
    gen = torch.Generator().manual_seed(11)
    for n in (50, 6000):
        x = torch.randn(10, n, generator=gen)
        x[x > 1.0] = math.inf
        x[x < -1.0] = -math.inf
        x[0] = math.inf
        x[1] = -math.inf
        for k in (1, n // 10, n // 6, n // 2, n - n // 6, n):
            assert_exact(kth_largest(x, k, backend=backend), x, k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_ranks_above_everything_like_topk(backend):
    gen = torch.Generator().manual_seed(5)
    for n in (40, 5000):
        x = torch.randn(6, n, generator=gen)
        x[0, :3] = math.nan  # 3 NaN
        x[1, torch.randperm(n, generator=gen)[: n // 10]] = math.nan  # many NaN (some in a sample)
        x[2] = math.nan  # all NaN
        x[3, -1] = math.nan
        x[3, :2] = math.inf
        x[4, 7] = math.nan
        x[4, 8] = -math.inf
        for k in (1, 2, 3, 4, n // 10, n // 10 + 1, n // 2, n):
            got = kth_largest(x, k, backend=backend)
            assert_exact(got, x, k)
            torch.testing.assert_close(
                got, torch.topk(x, k, dim=1).values[:, -1], rtol=0, atol=0, equal_nan=True
            )
        assert math.isnan(kth_largest(x, 3, backend=backend)[0])
        assert not math.isnan(kth_largest(x, 4, backend=backend)[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_other_dtypes_use_the_fallback(dtype):
    gen = torch.Generator().manual_seed(17)
    x = (torch.randn(9, 3001, generator=gen) * 100).to(dtype)
    assert backend_for(x) == "numpy"
    for k in (1, 300, 1500, 3001):
        assert_exact(kth_largest(x, k), x, k)
        assert_exact(kth_largest(x, k, backend="torch"), x, k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_input(backend):
    gen = torch.Generator().manual_seed(21)
    base = torch.randn(3000, 40, generator=gen)
    for x in (base.t(), base[::3, ::2], base.t()[:, 1::7], torch.randn(1, 2500).expand(6, 2500)):
        assert not x.is_contiguous()
        for k in (1, 7, x.shape[1] // 2, x.shape[1]):
            assert_exact(kth_largest(x, k, backend=backend), x, k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_input_is_not_modified(backend):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(16, 20_000, generator=gen)
    x[0, :10] = math.nan
    x[1, :] = -0.0
    before = x.clone()
    kth_largest(x, 2000, backend=backend)
    kth_largest(x, 1, backend=backend)
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))  # bit-exact, NaN included


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_k_out_of_range(backend):
    x = torch.randn(3, 10)
    for k in (0, -1, 11):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            kth_largest(x, k, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        kth_largest(torch.randn(10), 1, backend=backend)
    with pytest.raises(TypeError):
        kth_largest(x, 2.5, backend=backend)


@needs_native
def test_native_argument_validation():
    x = torch.randn(2, 5)
    out = torch.empty(2)
    f = select._native.kth_largest
    for k in (0, 6, -3):
        with pytest.raises(ValueError):
            f(x.data_ptr(), out.data_ptr(), 2, 5, k, 1)
    with pytest.raises(ValueError):
        f(x.data_ptr(), out.data_ptr(), 2, 0, 1, 1)  # n = 0
    with pytest.raises(ValueError):
        f(x.data_ptr(), out.data_ptr(), -1, 5, 1, 1)
    with pytest.raises(ValueError):
        f(0, out.data_ptr(), 2, 5, 1, 1)  # null pointer
    with pytest.raises(ValueError):
        f(-5, out.data_ptr(), 2, 5, 1, 1)
    with pytest.raises(TypeError):
        f(1.5, out.data_ptr(), 2, 5, 1, 1)
    f(0, 0, 0, 5, 1, 4)  # no rows: nothing to do
    f(in_ptr=x.data_ptr(), out_ptr=out.data_ptr(), rows=2, n=5, k=5, num_threads=2)
    torch.testing.assert_close(out, x.min(dim=1).values, rtol=0, atol=0)


def test_empty_batch_and_no_autograd():
    assert kth_largest(torch.empty(0, 7), 3).shape == (0,)
    x = torch.randn(4, 300, requires_grad=True)
    out = kth_largest(x, 10)
    assert not out.requires_grad and out.grad_fn is None
    with torch.no_grad():
        assert_exact(kth_largest(x.detach(), 10), x.detach(), 10)
    with torch.inference_mode():
        y = torch.randn(4, 300)
        assert_exact(kth_largest(y, 10), y, 10)


# ----------------------------------------------------------------------------------------------
# threading and processes


@needs_native
def test_concurrent_python_threads():
    """Calls from several Python threads at once (the GIL is released; the pool is shared)."""
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(64, 6000, generator=gen) for _ in range(8)]
    wants = [reference(x, 600) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        for _ in range(3):
            results = list(ex.map(lambda x: native_call(x, 600, 2), xs))
            for got, want in zip(results, wants, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


def _child_select(queue):
    # numpy only: torch's own OpenMP pool is not fork-safe, which is not what is tested here
    a = np.ascontiguousarray(np.arange(64 * 5000, dtype=np.float32).reshape(64, 5000)[:, ::-1])
    out = np.empty(64, dtype=np.float32)
    select._native.kth_largest(a.ctypes.data, out.ctypes.data, 64, 5000, 100, 2)
    queue.put(bool(np.array_equal(out, np.partition(a, 4900, axis=1)[:, 4900])))


@needs_native
@pytest.mark.skipif(
    sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods(),
    reason="fork start method (as DataLoader workers use on Linux) not available",
)
def test_works_in_forked_child():
    """After fork() (DataLoader workers) the child has none of the parent's worker threads."""
    native_call(torch.randn(64, 5000), 100, 2)  # make sure the parent's worker pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_select, args=(queue,))
    proc.start()
    try:
        assert queue.get(timeout=60) is True
    finally:
        proc.join(timeout=60)
        if proc.is_alive():  # pragma: no cover - a deadlock
            proc.kill()
    assert proc.exitcode == 0


@needs_native
def test_native_matches_numpy_partition_many_rows():
    """Many rows: exercises the rare bracket-miss fallback and the thread split."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 2500), dtype=np.float32)
    x = torch.from_numpy(a)
    for k in (250, 500):
        want = np.partition(a, 2500 - k, axis=1)[:, 2500 - k]
        got = kth_largest(x, k, backend="native").numpy()
        assert np.array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# kwta_mask: the k-WTA 0/1 mask, selection and comparison in one native call


def mask_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """(x >= t) with t from a full sort; in rows whose t is NaN (>= k NaNs): exactly the NaNs."""
    t = reference(x, k)[:, None]
    keep = x >= t
    if x.is_floating_point():
        keep |= x.isnan() & t.isnan()
    return keep.to(x.dtype)


def assert_mask(got: torch.Tensor, x: torch.Tensor, k: int) -> None:
    want = mask_reference(x, k)
    assert got.dtype == x.dtype and got.device == x.device and got.shape == x.shape
    assert not got.requires_grad and got.grad_fn is None
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        raise AssertionError(f"mask differs at {bad[:5].tolist()} ({len(bad)} entries), k={k}")


def native_mask_call(x: torch.Tensor, k: int, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The extension's kwta_mask called directly, explicit thread count: (mask, thresholds)."""
    x = x.contiguous()
    mask = torch.full(x.shape, 7.0)  # garbage: every entry must be overwritten
    thr = torch.full((x.shape[0],), 7.0)
    select._native.kwta_mask(
        x.data_ptr(), mask.data_ptr(), thr.data_ptr(), x.shape[0], x.shape[1], k, threads
    )
    return mask, thr


@needs_native
def test_kwta_mask_native_is_one_call(monkeypatch):
    calls = []
    real = select._native.kwta_mask

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(select._native, "kwta_mask", spy)
    x = torch.randn(4, 100)
    assert_mask(kwta_mask(x, 7), x, 7)
    assert_mask(kwta_mask(x, 7, backend="native"), x, 7)
    assert len(calls) == 2
    assert calls[0][2:6] == (0, 4, 100, 7)
    assert calls[0][6] == torch.get_num_threads()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kwta_mask_random_shapes(backend):
    gen = torch.Generator().manual_seed(4321)
    sizes = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 100, 128, 257, 1000, 2047, 2048, 2049]
    sizes += [4097, 12544] + [int(v) for v in torch.randint(1, 50_001, (5,), generator=gen)]
    sizes += [50_000]
    for n in sizes:
        rows = int(torch.randint(1, 65, (), generator=gen))
        rows = max(1, min(rows, 400_000 // n))
        x = torch.randn(rows, n, generator=gen) * 3
        for k in ks_for(n, gen):
            assert_mask(kwta_mask(x, k, backend=backend), x, k)


def _special_rows(n: int, gen: torch.Generator) -> torch.Tensor:
    """Ties, constant rows, infinities, NaN rows and signed zeros, all in one (rows, n) batch."""
    x = torch.randn(16, n, generator=gen)
    x[0] = 2.5  # constant
    x[1] = torch.randint(-2, 3, (n,), generator=gen).float()  # heavy ties
    x[2] = x[2].clamp_min(0)  # ReLU output: many exact zeros
    x[3] = math.inf
    x[4] = -math.inf
    x[5, x[5] > 0.5] = math.inf
    x[5, x[5] < -0.5] = -math.inf
    x[6] = math.nan  # all NaN
    x[7, : max(1, n // 3)] = math.nan  # some NaN
    x[8, -1] = math.nan
    x[8, 0] = -math.inf
    x[9, ::2] = -0.0
    x[9, 1::2] = 0.0
    x[10, torch.randperm(n, generator=gen)[: max(1, n // 10)]] = math.nan
    x[11] = -math.inf
    x[11, -1] = math.nan
    x[12] = torch.randn(n, generator=gen) * 1e-40  # subnormals
    x[13] = torch.arange(n, dtype=torch.float32)  # sorted
    x[14] = -torch.arange(n, dtype=torch.float32)
    return x


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kwta_mask_ties_infinities_nan(backend):
    gen = torch.Generator().manual_seed(12)
    for n in (1, 2, 5, 16, 33, 128, 1000, 3000, 20_000):
        x = _special_rows(n, gen)
        ks = {1, 2, n // 10, n // 3, n // 3 + 1, n // 2, n - 1, n} & set(range(1, n + 1))
        for k in sorted(ks):
            assert_mask(kwta_mask(x, k, backend=backend), x, k)


def test_kwta_mask_native_kernels_and_threads(native_isa):
    gen = torch.Generator().manual_seed(77)
    sizes = [*range(1, 41), 63, 64, 65, 128, 500, 2048, 3001, 12544, 40_000]
    for n in sizes:
        rows = max(2, min(40, 400_000 // n))
        for x in (torch.randn(rows, n, generator=gen), _special_rows(n, gen)):
            for k in sorted({1, max(1, n // 10), (n + 1) // 2, n}):
                want_mask = mask_reference(x, k)
                want_thr = reference(x, k)
                for threads in (1, 2, 3):
                    mask, thr = native_mask_call(x, k, threads)
                    assert torch.equal(mask, want_mask), (native_isa, n, k, threads)
                    torch.testing.assert_close(thr, want_thr, rtol=0, atol=0, equal_nan=True)


def test_kwta_mask_nan_and_minus_inf_rules(native_isa):
    """The documented edge cases, spelled out on a hand-made row per case."""
    nan, inf = math.nan, math.inf
    x = torch.tensor(
        [
            [nan, 1.0, nan, -inf, inf],  # k <= 2: t = NaN -> exactly the NaN entries
            [1.0, -inf, -inf, 0.0, -inf],  # k >= 3: t = -inf -> everything (no NaN)
            [nan, -inf, -inf, 0.0, -inf],  # k = 5: t = -inf -> everything but the NaN
        ]
    )
    for backend in CPU_BACKENDS:
        got = kwta_mask(x, 2, backend=backend)
        assert got[0].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
        got = kwta_mask(x, 3, backend=backend)
        assert got[0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]  # t = +inf
        assert got[1].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
        got = kwta_mask(x, 5, backend=backend)
        assert got[1].tolist() == [1.0] * 5
        assert got[2].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
        assert_mask(got, x, 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kwta_mask_non_contiguous_and_input_unchanged(backend):
    gen = torch.Generator().manual_seed(22)
    base = torch.randn(3000, 40, generator=gen)
    base[5, 3] = math.nan
    for x in (base.t(), base[::3, ::2], base.t()[:, 1::7], torch.randn(1, 2500).expand(6, 2500)):
        assert not x.is_contiguous()
        before = x.clone()
        for k in (1, 7, x.shape[1] // 2, x.shape[1]):
            assert_mask(kwta_mask(x, k, backend=backend), x, k)
        assert torch.equal(x.view(torch.int32), before.view(torch.int32))
    x = torch.randn(16, 20_000, generator=gen)
    x[0, :10] = math.nan
    x[1, :] = -0.0
    before = x.clone()
    for k in (1, 2000, 20_000):
        kwta_mask(x, k, backend=backend)
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))  # bit-exact


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_kwta_mask_other_dtypes(dtype):
    gen = torch.Generator().manual_seed(18)
    x = (torch.randn(9, 3001, generator=gen) * 100).to(dtype)
    if dtype.is_floating_point:
        x[0, :5] = math.nan
    for k in (1, 3, 300, 3001):
        assert_mask(kwta_mask(x, k), x, k)
        assert_mask(kwta_mask(x, k, backend="torch"), x, k)


def test_kwta_mask_fallback_without_extension(monkeypatch):
    monkeypatch.setattr(select, "_native", None)
    monkeypatch.setattr(select, "NATIVE_AVAILABLE", False)
    x = torch.randn(5, 300)
    assert_mask(kwta_mask(x, 30), x, 30)
    with pytest.raises(RuntimeError, match="not compiled"):
        kwta_mask(x, 30, backend="native")


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_kwta_mask_errors(backend):
    x = torch.randn(3, 10)
    for k in (0, -1, 11):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            kwta_mask(x, k, backend=backend)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        kwta_mask(torch.empty(3, 0), 1, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        kwta_mask(torch.randn(10), 1, backend=backend)
    with pytest.raises(TypeError):
        kwta_mask(x, 2.5, backend=backend)
    with pytest.raises(TypeError):
        kwta_mask(x.numpy(), 2, backend=backend)


def test_kwta_mask_forced_backend_errors():
    x = torch.randn(3, 10)
    with pytest.raises(ValueError, match="unknown backend"):
        kwta_mask(x, 2, backend="gpu")
    with pytest.raises(ValueError, match="CPU"):
        kwta_mask(torch.zeros(3, 10, device="meta"), 2, backend="numpy")
    if NATIVE_AVAILABLE:
        with pytest.raises(ValueError, match="float32"):
            kwta_mask(x.double(), 2, backend="native")


def test_kwta_mask_empty_batch_and_no_autograd():
    for backend in (None, *CPU_BACKENDS):
        m = kwta_mask(torch.empty(0, 7), 3, backend=backend)
        assert m.shape == (0, 7) and m.dtype == torch.float32
    x = torch.randn(4, 300, requires_grad=True)
    for backend in (None, *CPU_BACKENDS):
        assert_mask(kwta_mask(x, 10, backend=backend), x.detach(), 10)
        assert_mask(kwta_mask(x.t().t()[:, ::2], 10, backend=backend), x.detach()[:, ::2], 10)
    with torch.inference_mode():
        y = torch.randn(4, 300)
        assert_mask(kwta_mask(y, 10), y, 10)


@needs_native
def test_kwta_mask_native_argument_validation():
    x = torch.randn(2, 5)
    mask = torch.empty(2, 5)
    thr = torch.empty(2)
    f = select._native.kwta_mask
    for k in (0, 6, -3):
        with pytest.raises(ValueError):
            f(x.data_ptr(), mask.data_ptr(), 0, 2, 5, k, 1)
    with pytest.raises(ValueError):
        f(x.data_ptr(), mask.data_ptr(), 0, 2, 0, 1, 1)  # n = 0
    with pytest.raises(ValueError):
        f(x.data_ptr(), mask.data_ptr(), 0, -1, 5, 1, 1)
    with pytest.raises(ValueError):
        f(0, mask.data_ptr(), 0, 2, 5, 1, 1)  # null input
    with pytest.raises(ValueError):
        f(x.data_ptr(), 0, thr.data_ptr(), 2, 5, 1, 1)  # null mask
    with pytest.raises(ValueError, match="overlap"):
        f(x.data_ptr(), x.data_ptr(), 0, 2, 5, 1, 1)  # in place
    with pytest.raises(ValueError, match="overlap"):
        f(x.data_ptr(), x.data_ptr() + 12, 0, 2, 5, 1, 1)
    with pytest.raises(ValueError):
        f(-5, mask.data_ptr(), 0, 2, 5, 1, 1)
    with pytest.raises(TypeError):
        f(1.5, mask.data_ptr(), 0, 2, 5, 1, 1)
    f(0, 0, 0, 0, 5, 1, 4)  # no rows: nothing to do
    f(
        in_ptr=x.data_ptr(),
        mask_ptr=mask.data_ptr(),
        thr_ptr=thr.data_ptr(),
        rows=2,
        n=5,
        k=5,
        num_threads=2,
    )
    torch.testing.assert_close(thr, x.min(dim=1).values, rtol=0, atol=0)
    assert torch.equal(mask, torch.ones(2, 5))


@needs_native
def test_kwta_mask_concurrent_python_threads():
    gen = torch.Generator().manual_seed(41)
    xs = [torch.randn(64, 6000, generator=gen) for _ in range(8)]
    wants = [mask_reference(x, 600) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        for _ in range(3):
            results = list(ex.map(lambda x: native_mask_call(x, 600, 2)[0], xs))
            for got, want in zip(results, wants, strict=True):
                assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------
# the short-row path (n <= 1024, k <= 14 on AVX-512) and PyTorch's threads


def test_short_rows_small_k_every_kernel(native_isa):
    """Every k of the short-row path and just past it, on widths around the 16-lane vectors
    and up to its 1024 limit, random and special rows (ties, infinities, NaN, signed zeros):
    threshold and mask equal the sort-based reference."""
    gen = torch.Generator().manual_seed(91)
    for n in (1, 5, 14, 15, 16, 17, 31, 32, 33, 100, 128, 129, 255, 512, 1000, 1024, 1025):
        rows = [torch.randn(8, n, generator=gen), _special_rows(n, gen),
                torch.randint(-3, 4, (8, n), generator=gen).float()]  # heavy ties
        for x in rows:
            for k in range(1, min(n, 16) + 1):
                mask, thr = native_mask_call(x, k, 1)
                torch.testing.assert_close(thr, reference(x, k), rtol=0, atol=0,
                                           equal_nan=True)
                assert torch.equal(mask, mask_reference(x, k)), (native_isa, n, k)


def test_short_rows_where_the_lane_bound_leaves_many_candidates(native_isa):
    """Rows whose lane maxima sit low (the bound keeps more than 32 elements, so the quickselect
    finishes on them) and rows where every lane maximum is one value."""
    gen = torch.Generator().manual_seed(5)
    n = 512
    x = torch.randn(6, n, generator=gen)
    x[0] = torch.arange(n, dtype=torch.float32).flip(0)  # lanes hold consecutive values
    x[1] = torch.arange(n, dtype=torch.float32) % 16  # every lane maximum is 15
    x[2, :] = -1.0
    x[2, ::37] = 3.0  # few large values, in few lanes
    x[3] = torch.randn(n, generator=gen).abs().sort().values  # sorted ascending
    for k in (1, 7, 12, 14):
        mask, thr = native_mask_call(x, k, 1)
        torch.testing.assert_close(thr, reference(x, k), rtol=0, atol=0)
        assert torch.equal(mask, mask_reference(x, k)), k


@needs_native
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/task")
def test_runs_on_torchs_threads_without_starting_its_own():
    """With num_threads > 1 the rows go to PyTorch's OpenMP team (the threads at::parallel_for
    uses): after a torch op has started that team, a large call adds no thread."""
    import os

    if "OpenMP" not in torch.__config__.parallel_info() or torch.get_num_threads() < 2:
        pytest.skip("torch without an OpenMP team of two or more threads")
    assert select._native._team() == "openmp"
    a = torch.randn(512, 512)
    (a @ a).sum()  # torch's parallel region: its team exists from here on
    before = len(os.listdir("/proc/self/task"))
    x = torch.randn(256, 4096)
    mask, thr = native_mask_call(x, 400, torch.get_num_threads())
    assert len(os.listdir("/proc/self/task")) == before
    assert torch.equal(mask, mask_reference(x, 400))
