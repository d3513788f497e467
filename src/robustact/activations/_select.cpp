// Row-wise k-th largest selection for float32 matrices (used by k-WTA).
//
// Python API (module robustact.activations._select):
//
//   kth_largest(in_ptr, out_ptr, rows, n, k, num_threads) -> None
//   kwta_mask(in_ptr, mask_ptr, thr_ptr, rows, n, k, num_threads) -> None
//
// in_ptr  : address of a C-contiguous float32 (rows, n) buffer; it is only read.
// out_ptr : address of a float32 (rows,) buffer; out[r] = k-th largest value of row r.
// mask_ptr: address of a C-contiguous float32 (rows, n) buffer (must not overlap in_ptr's);
//           kwta_mask writes the k-WTA mask there: mask[r, j] = 1.0f if x[r, j] >= t_r else
//           0.0f, t_r = the k-th largest value of row r (computed exactly as by kth_largest), in
//           one compare-and-store pass right after the row's selection (the row is in cache).
//           NaN entries get 0.0 (NaN >= t is false) unless t_r itself is NaN (the row has at
//           least k NaNs), in which case the mask is 1.0 exactly at the NaN entries (the values
//           ranked at or above t_r in topk order) and 0.0 elsewhere. t_r = -inf gives 1.0 at
//           every non-NaN entry (-inf ones included).
// thr_ptr : 0, or the address of a float32 (rows,) buffer that receives t_r.
// 1 <= k <= n (ValueError otherwise). The GIL is released while computing. Rows are processed
// by up to num_threads threads, which take contiguous blocks of rows from a shared counter: the
// caller and PyTorch's own intra-op threads (the OpenMP team at::parallel_for uses, see
// "PyTorch's intra-op threads" below), or the caller alone when that team is busy; the extension
// starts no thread of its own.
//
// Semantics match torch.topk(x, k).values[:, -1]: NaN ranks above +inf (any NaN is "the largest"),
// then +inf, finite values, -inf. The result is always one of the row's values, copied unchanged
// (selection only, no arithmetic), so it is exact. +0.0 and -0.0 compare equal and either may be
// returned when the answer is a zero.
//
// Algorithm (per row; Floyd-Rivest style bracketing, then a vectorised quickselect; all out of
// place, the input is never written):
//   1. take a stratified pseudo-random sample of the row (one element per stratum; the seed is
//      the row index, so results do not depend on the thread split);
//   2. pick two sample order statistics lo <= hi that bracket rank k with a 2.5 sigma margin;
//   3. one vectorised pass over the row: count elements above hi (NaN counts as above) and
//      compact the elements in [lo, hi] into a scratch buffer (~10-15% of the row); a large
//      buffer is bracketed again the same way (it is in cache by then);
//   4. if rank k falls in the bracket, finish with a three-way quickselect on that buffer whose
//      partitions are vectorised compactions (pivot: rank-aware order statistic of a small
//      sample; std::nth_element takes over if a work budget is exceeded, so it stays O(n));
//      if it does not (rare: unlucky sample, adversarial data, NaN in the sample), run the
//      quickselect on a NaN-free copy of the whole row instead. Either way the answer is exact.
// Short rows with a small k (n <= 1024, k <= 14) take a faster path on AVX-512 CPUs: a bound
// from the maxima of the row's 16 lanes, then rank counting (see short_avx512).
// The vector kernels (AVX-512, AVX2, portable scalar) are chosen at run time: the binary is built
// without -march flags and runs on any x86-64 (or other) CPU.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#ifndef _WIN32
#include <dlfcn.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) || defined(__clang__)
#include <immintrin.h>
#define RA_HAVE_X86_KERNELS 1
#endif
#endif

// Tuning knobs (compile-time; -D overrides are for benchmarking only).
#ifndef RA_SAMPLE_ALPHA  // level-0 sample size = alpha * n^(2/3), clamped to [MIN, MAX]
#define RA_SAMPLE_ALPHA 0.25
#endif
#ifndef RA_SAMPLE_MIN
#define RA_SAMPLE_MIN 64
#endif
#ifndef RA_SAMPLE_MAX
#define RA_SAMPLE_MAX 1024
#endif
#ifndef RA_MARGIN_SIGMAS  // bracket half-width in standard deviations of the sample rank
#define RA_MARGIN_SIGMAS 2.5
#endif
#ifndef RA_BRACKET_MIN_N  // rows shorter than this skip the bracket pass
#define RA_BRACKET_MIN_N 2048
#endif
#ifndef RA_REBRACKET_MIN_N  // bracket the (in-cache) first-level buffer again if this large
#define RA_REBRACKET_MIN_N 4096
#endif
#ifndef RA_TINY_N  // quickselect hands over to brute-force rank counting at this size
#define RA_TINY_N 16
#endif

namespace ra_select {

constexpr std::size_t kPad = 32;  // vector kernels may write this many floats past the kept count
constexpr std::size_t kMaxSample = RA_SAMPLE_MAX;

struct PassResult {
    std::size_t above;   // elements x with !(x <= hi): greater than hi, or NaN
    std::size_t inside;  // elements lo <= x <= hi, written to out[0 .. inside)
};

struct Part3Result {
    std::size_t greater;  // elements x > pivot, written to gt[0 .. greater)
    std::size_t less;     // elements x < pivot, written to lt[0 .. less)
};

// Bracket pass over a (possibly NaN-containing) read-only array. `out`: n + kPad floats.
using PassFn = PassResult (*)(const float*, std::size_t, float, float, float*);
// Three-way split of a NaN-free array around `pivot`. `gt`, `lt`: n + kPad floats each.
using Part3Fn = Part3Result (*)(const float*, std::size_t, float, float*, float*);

// k-WTA mask of one row: out[j] = 1.0f if a[j] >= t else 0.0f (if t is NaN: 1.0f iff a[j] is
// NaN). `out` has exactly n floats (no padding) and does not overlap `a`.
using MaskFn = void (*)(const float*, std::size_t, float, float*);

// The k-th largest of a short NaN-free row with a small k, or a bracket of candidates (see
// short_avx512); null where the ISA has none.
using ShortFn = std::size_t (*)(const float*, std::size_t, std::size_t, float*, float*);

struct Kernels {
    PassFn pass;
    Part3Fn part3;
    MaskFn mask;
    ShortFn shortsel;
};

// ---------------------------------------------------------------------------------------------
// Partition passes. Contract: `out` has room for n + kPad floats.

PassResult pass_scalar(const float* a, std::size_t n, float lo, float hi, float* out) {
    std::size_t above = 0, m = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const float x = a[i];
        const bool le = x <= hi;
        const bool ge = x >= lo;
        out[m] = x;  // branch-free compaction: the slot is overwritten unless kept
        above += static_cast<std::size_t>(!le);
        m += static_cast<std::size_t>(le & ge);
    }
    return {above, m};
}

Part3Result part3_scalar(const float* a, std::size_t n, float pivot, float* gt, float* lt) {
    std::size_t g = 0, l = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const float x = a[i];
        gt[g] = x;
        lt[l] = x;
        g += static_cast<std::size_t>(x > pivot);
        l += static_cast<std::size_t>(x < pivot);
    }
    return {g, l};
}

void mask_scalar(const float* a, std::size_t n, float t, float* out) {
    if (t != t) {
        for (std::size_t i = 0; i < n; ++i) out[i] = a[i] != a[i] ? 1.0f : 0.0f;
        return;
    }
    for (std::size_t i = 0; i < n; ++i) out[i] = a[i] >= t ? 1.0f : 0.0f;
}

#ifdef RA_HAVE_X86_KERNELS

// For an 8-bit mask, the indices of its set bits packed as nibbles (lowest set bit first).
struct CompressLut {
    std::uint32_t v[256];
    constexpr CompressLut() : v() {
        for (int mask = 0; mask < 256; ++mask) {
            std::uint32_t packed = 0;
            int slot = 0;
            for (int bit = 0; bit < 8; ++bit) {
                if (mask & (1 << bit)) {
                    packed |= static_cast<std::uint32_t>(bit) << (4 * slot);
                    ++slot;
                }
            }
            v[mask] = packed;
        }
    }
};
alignas(64) constexpr CompressLut kCompressLut{};

__attribute__((target("avx2"))) inline std::size_t sum_negated_lanes(__m256i v) {
    alignas(32) std::int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
    std::size_t total = 0;
    for (int j = 0; j < 8; ++j) total += static_cast<std::uint32_t>(-lanes[j]);
    return total;
}

__attribute__((target("avx2"))) inline __m256i compress_perm_avx2(unsigned mask) {
    // the permutation that packs the lanes set in `mask` to the front, in order
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kCompressLut.v[mask])), shifts),
        _mm256_set1_epi32(0xF));
}

__attribute__((target("avx2,popcnt"))) PassResult pass_avx2(const float* a, std::size_t n,
                                                             float lo, float hi, float* out) {
    const __m256 vlo = _mm256_set1_ps(lo);
    const __m256 vhi = _mm256_set1_ps(hi);
    std::size_t m = 0, le_total = 0, i = 0;
    // 32-bit lane counters: reduce them at least every 2^28 vectors.
    constexpr std::size_t kBlock = std::size_t{8} << 28;
    while (i + 8 <= n) {
        const std::size_t block_end = i + std::min<std::size_t>((n - i) & ~std::size_t{7}, kBlock);
        __m256i le_count = _mm256_setzero_si256();  // per lane: minus the number of x <= hi
        for (; i < block_end; i += 8) {
            const __m256 v = _mm256_loadu_ps(a + i);
            const __m256 le = _mm256_cmp_ps(v, vhi, _CMP_LE_OQ);  // false for NaN
            const __m256 ge = _mm256_cmp_ps(v, vlo, _CMP_GE_OQ);
            le_count = _mm256_add_epi32(le_count, _mm256_castps_si256(le));  // -1 where true
            const unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_and_ps(le, ge)));
            _mm256_storeu_ps(out + m, _mm256_permutevar8x32_ps(v, compress_perm_avx2(mask)));
            m += static_cast<std::size_t>(_mm_popcnt_u32(mask));
        }
        le_total += sum_negated_lanes(le_count);
    }
    const PassResult tail = pass_scalar(a + i, n - i, lo, hi, out + m);  // the last n % 8
    return {i - le_total + tail.above, m + tail.inside};
}

__attribute__((target("avx512f,popcnt"))) PassResult pass_avx512(const float* a, std::size_t n,
                                                                 float lo, float hi, float* out) {
    const __m512 vlo = _mm512_set1_ps(lo);
    const __m512 vhi = _mm512_set1_ps(hi);
    std::size_t m = 0, le_total = 0, i = 0;
    for (; i + 32 <= n; i += 32) {  // two independent vectors per iteration
        const __m512 v0 = _mm512_loadu_ps(a + i);
        const __m512 v1 = _mm512_loadu_ps(a + i + 16);
        const __mmask16 le0 = _mm512_cmp_ps_mask(v0, vhi, _CMP_LE_OQ);
        const __mmask16 le1 = _mm512_cmp_ps_mask(v1, vhi, _CMP_LE_OQ);
        const __mmask16 in0 = _mm512_mask_cmp_ps_mask(le0, v0, vlo, _CMP_GE_OQ);
        const __mmask16 in1 = _mm512_mask_cmp_ps_mask(le1, v1, vlo, _CMP_GE_OQ);
        le_total += static_cast<std::size_t>(
            _mm_popcnt_u32(static_cast<unsigned>(le0) | (static_cast<unsigned>(le1) << 16)));
        // Compress in registers, then a plain store (memory-destination compress is slow on
        // some CPUs).
        _mm512_storeu_ps(out + m, _mm512_maskz_compress_ps(in0, v0));
        m += static_cast<std::size_t>(_mm_popcnt_u32(in0));
        _mm512_storeu_ps(out + m, _mm512_maskz_compress_ps(in1, v1));
        m += static_cast<std::size_t>(_mm_popcnt_u32(in1));
    }
    for (; i < n; i += 16) {
        const std::size_t left = n - i;
        const __mmask16 valid =
            left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(valid, a + i);
        const __mmask16 le = _mm512_mask_cmp_ps_mask(valid, v, vhi, _CMP_LE_OQ);
        const __mmask16 in = _mm512_mask_cmp_ps_mask(le, v, vlo, _CMP_GE_OQ);
        le_total += static_cast<std::size_t>(_mm_popcnt_u32(le));
        _mm512_storeu_ps(out + m, _mm512_maskz_compress_ps(in, v));
        m += static_cast<std::size_t>(_mm_popcnt_u32(in));
    }
    return {n - le_total, m};
}

__attribute__((target("avx2,popcnt"))) Part3Result part3_avx2(const float* a, std::size_t n,
                                                              float pivot, float* gt, float* lt) {
    const __m256 vp = _mm256_set1_ps(pivot);
    std::size_t g = 0, l = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(a + i);
        const unsigned mg =
            static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vp, _CMP_GT_OQ)));
        const unsigned ml =
            static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vp, _CMP_LT_OQ)));
        _mm256_storeu_ps(gt + g, _mm256_permutevar8x32_ps(v, compress_perm_avx2(mg)));
        g += static_cast<std::size_t>(_mm_popcnt_u32(mg));
        _mm256_storeu_ps(lt + l, _mm256_permutevar8x32_ps(v, compress_perm_avx2(ml)));
        l += static_cast<std::size_t>(_mm_popcnt_u32(ml));
    }
    const Part3Result tail = part3_scalar(a + i, n - i, pivot, gt + g, lt + l);  // the last n % 8
    return {g + tail.greater, l + tail.less};
}

__attribute__((target("avx512f,popcnt"))) Part3Result part3_avx512(const float* a, std::size_t n,
                                                                   float pivot, float* gt,
                                                                   float* lt) {
    const __m512 vp = _mm512_set1_ps(pivot);
    std::size_t g = 0, l = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(a + i);
        const __mmask16 mg = _mm512_cmp_ps_mask(v, vp, _CMP_GT_OQ);
        const __mmask16 ml = _mm512_cmp_ps_mask(v, vp, _CMP_LT_OQ);
        _mm512_storeu_ps(gt + g, _mm512_maskz_compress_ps(mg, v));
        g += static_cast<std::size_t>(_mm_popcnt_u32(mg));
        _mm512_storeu_ps(lt + l, _mm512_maskz_compress_ps(ml, v));
        l += static_cast<std::size_t>(_mm_popcnt_u32(ml));
    }
    if (i < n) {
        const __mmask16 valid = static_cast<__mmask16>((1u << (n - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(valid, a + i);
        const __mmask16 mg = _mm512_mask_cmp_ps_mask(valid, v, vp, _CMP_GT_OQ);
        const __mmask16 ml = _mm512_mask_cmp_ps_mask(valid, v, vp, _CMP_LT_OQ);
        _mm512_storeu_ps(gt + g, _mm512_maskz_compress_ps(mg, v));
        g += static_cast<std::size_t>(_mm_popcnt_u32(mg));
        _mm512_storeu_ps(lt + l, _mm512_maskz_compress_ps(ml, v));
        l += static_cast<std::size_t>(_mm_popcnt_u32(ml));
    }
    return {g, l};
}

// The mask passes: an ordered compare against t (false for NaN), or, when t is NaN, an
// unordered self-compare (true exactly for NaN); the all-ones compare result ANDed with 1.0f
// (AVX2) or a zero-masked move of 1.0f (AVX-512) gives the 0/1 float.
template <bool kNanThreshold>
__attribute__((target("avx2"))) inline __m256 mask_test_avx2(__m256 v, __m256 vt) {
    return kNanThreshold ? _mm256_cmp_ps(v, v, _CMP_UNORD_Q) : _mm256_cmp_ps(v, vt, _CMP_GE_OQ);
}

template <bool kNanThreshold>
__attribute__((target("avx2"))) inline void mask_avx2_impl(const float* a, std::size_t n, float t,
                                                           float* out) {
    const __m256 vt = _mm256_set1_ps(t);
    const __m256 one = _mm256_set1_ps(1.0f);
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(a + i);
        const __m256 v1 = _mm256_loadu_ps(a + i + 8);
        _mm256_storeu_ps(out + i, _mm256_and_ps(mask_test_avx2<kNanThreshold>(v0, vt), one));
        _mm256_storeu_ps(out + i + 8, _mm256_and_ps(mask_test_avx2<kNanThreshold>(v1, vt), one));
    }
    if (i + 8 <= n) {
        const __m256 v = _mm256_loadu_ps(a + i);
        _mm256_storeu_ps(out + i, _mm256_and_ps(mask_test_avx2<kNanThreshold>(v, vt), one));
        i += 8;
    }
    for (; i < n; ++i) {
        const float x = a[i];
        out[i] = (kNanThreshold ? x != x : x >= t) ? 1.0f : 0.0f;
    }
}

__attribute__((target("avx2"))) void mask_avx2(const float* a, std::size_t n, float t,
                                               float* out) {
    if (t != t) {
        mask_avx2_impl<true>(a, n, t, out);
    } else {
        mask_avx2_impl<false>(a, n, t, out);
    }
}

template <bool kNanThreshold>
__attribute__((target("avx512f"))) inline void mask_avx512_impl(const float* a, std::size_t n,
                                                                float t, float* out) {
    const __m512 vt = _mm512_set1_ps(t);
    const __m512 one = _mm512_set1_ps(1.0f);
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 v0 = _mm512_loadu_ps(a + i);
        const __m512 v1 = _mm512_loadu_ps(a + i + 16);
        const __mmask16 m0 = kNanThreshold ? _mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q)
                                           : _mm512_cmp_ps_mask(v0, vt, _CMP_GE_OQ);
        const __mmask16 m1 = kNanThreshold ? _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q)
                                           : _mm512_cmp_ps_mask(v1, vt, _CMP_GE_OQ);
        _mm512_storeu_ps(out + i, _mm512_maskz_mov_ps(m0, one));
        _mm512_storeu_ps(out + i + 16, _mm512_maskz_mov_ps(m1, one));
    }
    for (; i < n; i += 16) {  // at most two (masked) vectors; nothing is read or written past n
        const std::size_t left = n - i;
        const __mmask16 valid =
            left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(valid, a + i);
        const __mmask16 m = kNanThreshold ? _mm512_mask_cmp_ps_mask(valid, v, v, _CMP_UNORD_Q)
                                          : _mm512_mask_cmp_ps_mask(valid, v, vt, _CMP_GE_OQ);
        _mm512_mask_storeu_ps(out + i, valid, _mm512_maskz_mov_ps(m, one));
    }
}

__attribute__((target("avx512f"))) void mask_avx512(const float* a, std::size_t n, float t,
                                                    float* out) {
    if (t != t) {
        mask_avx512_impl<true>(a, n, t, out);
    } else {
        mask_avx512_impl<false>(a, n, t, out);
    }
}


// ---- short rows: lane maxima, one compaction, rank counting (AVX-512) ------------------------
//
// For a row of at most kShortMaxN values without NaN, and k <= kShortMaxK: viewing the row as
// columns of 16 lanes, the k-th largest `lo` of the 16 lane maxima (16 distinct elements of the
// row) is a lower bound of the row's k-th largest (at least k elements are >= lo). The elements
// >= lo (about 1.5 k of them for k = n / 10) are copied out, and when they are at most 32 the
// answer is found by counting, for each, the ones above it (else the quickselect finishes on
// them). No pivot and no sampling; lanes past n are -inf, which only lowers lo. Measured (AMD
// EPYC, 128 rows of 128, k = 12): ~85 ns a row, against ~140 ns for the copying pass and the
// quickselect of the general path; 128 rows of 512, k = 8: ~170 ns against ~300 ns.

constexpr std::size_t kShortMaxN = 1024;
// From k = 15 the bound (the 15th or 16th largest of 16 maxima) leaves ~45 candidates of 128
// and this path loses to the general one; so it did for k up to 32 with two maxima per lane.
constexpr std::size_t kShortMaxK = 14;

// The k-th largest of v[0 .. m), 1 <= k <= m <= 32, no NaN: the value with fewer than k values
// above it and at least k at or above it.
__attribute__((target("avx512f,popcnt"))) inline float kth_by_count(const float* v, std::size_t m,
                                                                    std::size_t k) {
    const __mmask16 in_a = m >= 16 ? static_cast<__mmask16>(0xFFFF)
                                   : static_cast<__mmask16>((1u << m) - 1u);
    const __mmask16 in_b = m <= 16 ? static_cast<__mmask16>(0)
                                   : static_cast<__mmask16>((1u << (m - 16)) - 1u);
    const __m512 a = _mm512_maskz_loadu_ps(in_a, v);
    const __m512 b = _mm512_maskz_loadu_ps(in_b, v + 16);
    for (std::size_t j = 0; j < m; ++j) {
        const __m512 x = _mm512_set1_ps(v[j]);
        const unsigned above =
            static_cast<unsigned>(_mm_popcnt_u32(_mm512_mask_cmp_ps_mask(in_a, a, x, _CMP_GT_OQ))) +
            static_cast<unsigned>(_mm_popcnt_u32(_mm512_mask_cmp_ps_mask(in_b, b, x, _CMP_GT_OQ)));
        if (above >= k) continue;
        const unsigned at_or_above =
            static_cast<unsigned>(_mm_popcnt_u32(_mm512_mask_cmp_ps_mask(in_a, a, x, _CMP_GE_OQ))) +
            static_cast<unsigned>(_mm_popcnt_u32(_mm512_mask_cmp_ps_mask(in_b, b, x, _CMP_GE_OQ)));
        if (at_or_above >= k) return v[j];
    }
    return v[0];  // unreachable for 1 <= k <= m
}

// Returns the number c of candidates (the elements >= lo, c >= k) written to cand[0 .. c), and
// if c <= 32 also the k-th largest in *t; 0 if the row holds a NaN. n <= kShortMaxN,
// 1 <= k <= kShortMaxK; cand has room for n + kPad floats.
__attribute__((target("avx512f,popcnt"))) std::size_t short_avx512(const float* a, std::size_t n,
                                                                   std::size_t k, float* cand,
                                                                   float* t) {
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __mmask16 all = 0xFFFF;
    __m512 top = minus_inf;
    __mmask16 nan = 0;
    for (std::size_t i = 0; i < n; i += 16) {
        const std::size_t left = n - i;
        const __mmask16 valid =
            left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_mask_loadu_ps(minus_inf, valid, a + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        // (the maskz form: GCC 12 warns about _mm512_max_ps's undefined pass-through operand)
        top = _mm512_maskz_max_ps(all, top, v);
    }
    if (nan != 0) return 0;
    alignas(64) float tops[16];
    _mm512_store_ps(tops, top);
    const __m512 vlo = _mm512_set1_ps(kth_by_count(tops, 16, k));
    std::size_t c = 0;
    for (std::size_t i = 0; i < n; i += 16) {
        const std::size_t left = n - i;
        const __mmask16 valid =
            left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(valid, a + i);
        // a few elements (about 2 k of the n): copied one by one, since vector compress-stores
        // and the vector reloads of kth_by_count would stall on store forwarding
        unsigned keep = _mm512_mask_cmp_ps_mask(valid, v, vlo, _CMP_GE_OQ);
        while (keep != 0) {
            cand[c++] = a[i + static_cast<std::size_t>(__builtin_ctz(keep))];
            keep &= keep - 1;
        }
    }
    if (c <= 32) *t = kth_by_count(cand, c, k);
    return c;
}

#endif  // RA_HAVE_X86_KERNELS

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

inline const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Avx512: return "avx512";
        case Isa::Avx2: return "avx2";
        default: return "scalar";
    }
}

inline Isa best_isa() {
#ifdef RA_HAVE_X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt")) return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return Isa::Avx2;
#endif
    return Isa::Scalar;
}

inline bool isa_supported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(best_isa()); }

inline Kernels kernels_for(Isa isa) {
#ifdef RA_HAVE_X86_KERNELS
    if (isa == Isa::Avx512) return {pass_avx512, part3_avx512, mask_avx512, short_avx512};
    if (isa == Isa::Avx2) return {pass_avx2, part3_avx2, mask_avx2, nullptr};
#endif
    (void)isa;
    return {pass_scalar, part3_scalar, mask_scalar, nullptr};
}

// ---------------------------------------------------------------------------------------------
// Selection.

struct Rng {  // 64-bit LCG (Knuth's MMIX constants); the high 32 bits are used
    std::uint64_t state;
    explicit Rng(std::uint64_t seed) : state(seed) {}
    inline std::uint64_t next32() {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return state >> 32;
    }
};

// Fills sample[0 .. s) with one pseudo-random element from each of s equal strata of a[0 .. n)
// (1 <= s <= n). Returns true if a sampled value is NaN.
inline bool stratified_sample(const float* a, std::size_t n, std::size_t s, float* sample,
                              Rng& rng) {
    // Stratum i starts at floor(i * n / s) (32.32 fixed point) and is n / s elements wide.
    const std::uint64_t step = (static_cast<std::uint64_t>(n) << 32) / s;
    const std::uint64_t width = n / s;
    std::uint64_t pos = 0;
    bool has_nan = false;
    for (std::size_t i = 0; i < s; ++i) {
        const float x = a[(pos >> 32) + ((rng.next32() * width) >> 32)];
        pos += step;
        sample[i] = x;
        has_nan |= x != x;
    }
    return has_nan;
}

// Branch-free compare-exchange on locals (compiles to minss / maxss).
#define RA_CX(a, b)                            \
    do {                                       \
        const float lo_ = (b) < (a) ? (b) : (a); \
        const float hi_ = (b) < (a) ? (a) : (b); \
        (a) = lo_;                             \
        (b) = hi_;                             \
    } while (0)

// Sorts v[0 .. 9) ascending (NaN-free): Batcher odd-even merge network, 28 compare-exchanges
// (verified exhaustively with the 0-1 principle).
inline void sort9(float* v) {
    float x0 = v[0], x1 = v[1], x2 = v[2], x3 = v[3], x4 = v[4], x5 = v[5], x6 = v[6], x7 = v[7],
          x8 = v[8];
    RA_CX(x0, x1); RA_CX(x2, x3); RA_CX(x4, x5); RA_CX(x6, x7);
    RA_CX(x0, x2); RA_CX(x1, x3); RA_CX(x4, x6); RA_CX(x5, x7);
    RA_CX(x1, x2); RA_CX(x5, x6); RA_CX(x0, x4); RA_CX(x1, x5);
    RA_CX(x2, x6); RA_CX(x3, x7); RA_CX(x2, x4); RA_CX(x3, x5);
    RA_CX(x1, x2); RA_CX(x3, x4); RA_CX(x5, x6); RA_CX(x0, x8);
    RA_CX(x4, x8); RA_CX(x2, x4); RA_CX(x3, x5); RA_CX(x6, x8);
    RA_CX(x1, x2); RA_CX(x3, x4); RA_CX(x5, x6); RA_CX(x7, x8);
    v[0] = x0, v[1] = x1, v[2] = x2, v[3] = x3, v[4] = x4, v[5] = x5, v[6] = x6, v[7] = x7;
    v[8] = x8;
}

inline void sort3(float* v) {
    float x0 = v[0], x1 = v[1], x2 = v[2];
    RA_CX(x0, x1);
    RA_CX(x1, x2);
    RA_CX(x0, x1);
    v[0] = x0, v[1] = x1, v[2] = x2;
}

#undef RA_CX

// Brute-force rank counting for tiny NaN-free arrays: the x with #(> x) < k <= #(>= x).
inline float tiny_select(const float* a, std::size_t n, std::size_t k) {
    for (std::size_t i = 0; i < n; ++i) {
        const float x = a[i];
        std::size_t gt = 0, ge = 0;
        for (std::size_t j = 0; j < n; ++j) {
            gt += static_cast<std::size_t>(a[j] > x);
            ge += static_cast<std::size_t>(a[j] >= x);
        }
        if (gt < k && k <= ge) return x;
    }
    return a[0];  // unreachable for NaN-free input and 1 <= k <= n
}

// Pivot for quickselect: the sampled order statistic at the target's relative rank
// q = (n - k + 1/2) / n (ascending), from 9 (n > 32) or 3 stratified random elements.
inline float choose_pivot(const float* a, std::size_t n, std::size_t k, Rng& rng) {
    const std::size_t m = n > 32 ? 9 : 3;  // 9 from n = 33: ~10% faster on 128-wide rows
    float v[9];
    const std::uint64_t step = (static_cast<std::uint64_t>(n) << 32) / m;
    const std::uint64_t width = n / m;
    std::uint64_t pos = 0;
    for (std::size_t i = 0; i < m; ++i) {
        v[i] = a[(pos >> 32) + ((rng.next32() * width) >> 32)];
        pos += step;
    }
    std::size_t pi = ((2 * (n - k) + 1) * m) / (2 * n);
    if (pi >= m) pi = m - 1;
    if (m == 9) {
        sort9(v);
    } else {
        sort3(v);
    }
    return v[pi];
}

// k-th largest (1-based) of the NaN-free buffer buf[0 .. n), 1 <= k <= n. buf, t1 and t2 each
// hold n + kPad floats; all three are clobbered.
float quickselect(float* buf, float* t1, float* t2, std::size_t n, std::size_t k, Part3Fn part3,
                  Rng& rng) {
    float* cur = buf;
    std::size_t work = 0;
    const std::size_t budget = 8 * n + 4096;
    while (n > RA_TINY_N) {
        if (work > budget) {  // unlucky or adversarial pivots: guaranteed O(n) finish
            float* target = cur + (n - k);
            std::nth_element(cur, target, cur + n);
            return *target;
        }
        const float pivot = choose_pivot(cur, n, k, rng);
        const Part3Result r = part3(cur, n, pivot, t1, t2);
        work += n;
        if (k <= r.greater) {  // continue in the "greater" part (t1)
            float* old = cur;
            cur = t1;
            t1 = old;
            n = r.greater;
        } else if (k <= n - r.less) {
            return pivot;  // rank k falls among the elements equal to the pivot
        } else {  // continue in the "less" part (t2)
            k -= n - r.less;
            float* old = cur;
            cur = t2;
            t2 = old;
            n = r.less;
        }
    }
    return tiny_select(cur, n, k);
}

struct Scratch {
    std::size_t capacity;                // rows of up to this length
    std::vector<float> a, b, c;          // row-sized buffers, capacity + kPad each
    std::vector<float> s0, s1, s2, s3;  // sample-sized buffers
    explicit Scratch(std::size_t n)
        : capacity(n), a(n + kPad), b(n + kPad), c(n + kPad), s0(kMaxSample + kPad),
          s1(kMaxSample + kPad), s2(kMaxSample + kPad), s3(kMaxSample + kPad) {}
};

// Exact k-th largest of a read-only row that may contain NaN (NaN ranks highest).
float exact_row(const float* a, std::size_t n, std::size_t k, Scratch& sc, const Kernels& kern,
                Rng& rng) {
    const float inf = std::numeric_limits<float>::infinity();
    const PassResult pr = kern.pass(a, n, -inf, inf, sc.a.data());  // drops (and counts) NaN
    const std::size_t nan_count = pr.above;
    if (k <= nan_count) {
        for (std::size_t i = 0; i < n; ++i) {
            if (a[i] != a[i]) return a[i];
        }
    }
    return quickselect(sc.a.data(), sc.b.data(), sc.c.data(), pr.inside, k - nan_count, kern.part3,
                       rng);
}

inline std::size_t sample_size(std::size_t n) {
    const double s = RA_SAMPLE_ALPHA * std::cbrt(static_cast<double>(n) * static_cast<double>(n));
    std::size_t si = static_cast<std::size_t>(s);
    si = std::max<std::size_t>(si, RA_SAMPLE_MIN);
    si = std::min<std::size_t>(si, kMaxSample);
    return std::min(si, n);
}

// Picks lo <= hi from a sample of a[0 .. n) so that the k-th largest is likely in [lo, hi].
// Returns false when there is no useful bracket (NaN in the sample, or it would be everything).
bool choose_bracket(const float* a, std::size_t n, std::size_t k, Scratch& sc, Part3Fn part3,
                    Rng& rng, float* lo_out, float* hi_out) {
    const std::size_t s = sample_size(n);
    float* sample = sc.s0.data();
    if (stratified_sample(a, n, s, sample, rng)) return false;

    // The target's ascending index n - k sits near sample index q*s - 1/2, q = (n - k + 1/2) / n.
    const double q = (static_cast<double>(n - k) + 0.5) / static_cast<double>(n);
    const double centre = q * static_cast<double>(s) - 0.5;
    const double margin =
        RA_MARGIN_SIGMAS * std::sqrt(static_cast<double>(s) * q * (1.0 - q)) + 1.5;
    const double lo_pos = std::floor(centre - margin);
    const double hi_pos = std::ceil(centre + margin);
    const bool lo_open = lo_pos < 0.0;                            // lo = -inf
    const bool hi_open = hi_pos > static_cast<double>(s) - 1.0;  // hi = +inf
    if (lo_open && hi_open) return false;
    float lo = -std::numeric_limits<float>::infinity();
    float hi = std::numeric_limits<float>::infinity();
    // Ascending index i of the s values is their (s - i)-th largest. The second order statistic
    // is selected among the values beyond the first one (a small set when k is far from n/2).
    const std::size_t li = lo_open ? 0 : static_cast<std::size_t>(lo_pos);
    const std::size_t hj = hi_open ? s - 1 : static_cast<std::size_t>(hi_pos);
    float* s1 = sc.s1.data();
    float* s2 = sc.s2.data();
    float* s3 = sc.s3.data();
    std::memcpy(s1, sample, s * sizeof(float));
    if (hi_open) {
        lo = quickselect(s1, s2, s3, s, s - li, part3, rng);
    } else if (lo_open) {
        hi = quickselect(s1, s2, s3, s, s - hj, part3, rng);
    } else if (li + hj >= s - 1) {  // upper half: lo first, then hi among the values > lo
        lo = quickselect(s1, s2, s3, s, s - li, part3, rng);
        const Part3Result r = part3(sample, s, lo, s2, s3);
        const std::size_t kh = s - hj;
        hi = kh <= r.greater ? quickselect(s2, s1, s3, r.greater, kh, part3, rng) : lo;
    } else {  // lower half: hi first, then lo among the values < hi
        hi = quickselect(s1, s2, s3, s, s - hj, part3, rng);
        const Part3Result r = part3(sample, s, hi, s2, s3);
        lo = li < r.less ? quickselect(s3, s1, s2, r.less, r.less - li, part3, rng) : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
    return true;
}

inline std::uint64_t row_seed(std::size_t row) {
    return 0x243F6A8885A308D3ull ^ (static_cast<std::uint64_t>(row) * 0x9E3779B97F4A7C15ull);
}

// k-th largest (1-based, NaN highest) of the read-only row a[0 .. n).
float select_row(const float* a, std::size_t n, std::size_t k, Scratch& sc, const Kernels& kern,
                 std::uint64_t seed) {
    Rng rng(seed);
#ifdef RA_HAVE_X86_KERNELS
    if (kern.shortsel != nullptr && n <= kShortMaxN && k <= kShortMaxK) {
        float t;
        const std::size_t c = kern.shortsel(a, n, k, sc.a.data(), &t);
        if (c != 0 && c <= 32) return t;
        if (c != 0) {
            return quickselect(sc.a.data(), sc.b.data(), sc.c.data(), c, k, kern.part3, rng);
        }
    }  // else a NaN in the row: the general path ranks it
#endif
    if (n < RA_BRACKET_MIN_N) return exact_row(a, n, k, sc, kern, rng);
    float lo, hi;
    if (!choose_bracket(a, n, k, sc, kern.part3, rng, &lo, &hi)) {
        return exact_row(a, n, k, sc, kern, rng);
    }
    PassResult pr = kern.pass(a, n, lo, hi, sc.a.data());
    if (pr.above >= k || k > pr.above + pr.inside) {  // the bracket missed rank k
        return exact_row(a, n, k, sc, kern, rng);
    }
    if (lo == hi) return lo;  // every kept element equals lo
    // Rank k is inside buffer a (NaN-free). While it is large, bracket again (cheap: it is now in
    // cache); then finish with the quickselect.
    float* cur = sc.a.data();
    float* t1 = sc.b.data();
    float* t2 = sc.c.data();
    std::size_t cn = pr.inside;
    k -= pr.above;
    while (cn >= RA_REBRACKET_MIN_N) {
        if (!choose_bracket(cur, cn, k, sc, kern.part3, rng, &lo, &hi)) break;
        pr = kern.pass(cur, cn, lo, hi, t1);
        if (pr.above >= k || k > pr.above + pr.inside) break;  // missed: quickselect on cur
        if (lo == hi) return lo;
        const bool poor = 2 * pr.inside > cn;  // ties around rank k: let the 3-way quickselect
        k -= pr.above;                          // finish (it returns a pivot's whole tie run)
        cn = pr.inside;
        std::swap(cur, t1);
        if (poor) break;
    }
    return quickselect(cur, t1, t2, cn, k, kern.part3, rng);
}

// ---------------------------------------------------------------------------------------------
// Rows and threads.

// Per-thread scratch memory, kept between calls (OpenMP's threads are persistent) unless huge.
constexpr std::size_t kCachedScratchMaxN = std::size_t{1} << 20;

Scratch& thread_scratch(std::size_t n, std::unique_ptr<Scratch>& uncached) {
    thread_local std::unique_ptr<Scratch> cache;
    if (cache && cache->capacity >= n) return *cache;
    if (n > kCachedScratchMaxN) {
        uncached.reset(new Scratch(n));
        return *uncached;
    }
    cache.reset();
    cache.reset(new Scratch(n));
    return *cache;
}

// Processes rows [r0, r1): out[r] = the threshold (if out is non-null), and the row's k-WTA mask
// (if mask is non-null). Returns false if scratch memory could not be allocated.
bool run_rows(const float* in, float* out, float* mask, std::size_t r0, std::size_t r1,
              std::size_t n, std::size_t k, const Kernels& kern) noexcept {
    if (r0 >= r1) return true;
    try {
        std::unique_ptr<Scratch> uncached;
        Scratch& sc = thread_scratch(n, uncached);
        for (std::size_t r = r0; r < r1; ++r) {
            const float* row = in + r * n;
            const float t = select_row(row, n, k, sc, kern, row_seed(r));
            if (out != nullptr) out[r] = t;
            if (mask != nullptr) kern.mask(row, n, t, mask + r * n);
        }
        return true;
    } catch (...) {
        return false;
    }
}

// One call's work. Rows are handed out in contiguous blocks from an atomic counter rather than
// as one fixed chunk per thread: if a thread starts late or loses its core (e.g. to another
// process), the others take its rows.
// Results do not depend on the split (each row's sampling seed is its index).
struct Job {
    const float* in;
    float* out;   // thresholds, or null
    float* mask;  // k-WTA mask, or null
    std::size_t rows, n, k, parts, grain;
    Kernels kern;
    std::atomic<std::size_t> next{0};
    std::atomic<bool> ok{true};
    void run_part(std::size_t) noexcept {
        for (;;) {
            const std::size_t r0 = next.fetch_add(grain, std::memory_order_relaxed);
            if (r0 >= rows) return;
            if (!run_rows(in, out, mask, r0, std::min(rows, r0 + grain), n, k, kern)) {
                ok.store(false);
            }
        }
    }
};

inline long current_pid() {
#ifdef _WIN32
    return 0;  // no fork()
#else
    return static_cast<long>(getpid());
#endif
}

// PyTorch's intra-op threads. torch runs at::parallel_for on its OpenMP runtime (libgomp in the
// Linux wheels); a call spreads its rows over that same team of threads instead of threads of its
// own, which on a small machine would compete with torch's workers (they spin for a while after
// every parallel op). GOMP_parallel(fn, data, num_threads, flags) is the entry point that
// `#pragma omp parallel num_threads(n)` compiles to (GCC's ABI, also exported by LLVM's and
// Intel's runtimes); it is looked up at run time in the runtime the process has already loaded
// (dlopen RTLD_NOLOAD: torch's), so the extension links no OpenMP runtime and is built as before.
// The rows run on the calling thread alone when the job is small, when the team is busy with
// another Python thread's call, inside a parallel region, in a child forked after the module was
// loaded (GNU OpenMP's team does not survive fork: torch's own ops hang there), or when no OpenMP
// runtime is loaded (a torch built with another parallel backend).
struct OpenMP {
    using ParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
    using QueryFn = int (*)();
    ParallelFn parallel = nullptr;
    QueryFn in_parallel = nullptr;
};

OpenMP find_openmp() {
    OpenMP omp;
#ifndef _WIN32
    static const char* const names[] = {"libgomp.so.1", "libomp.so", "libiomp5.so",
                                        "libomp.dylib", "libiomp5.dylib"};
    for (const char* name : names) {
        void* lib = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);  // only a runtime already loaded
        if (lib == nullptr) continue;
        omp.parallel = reinterpret_cast<OpenMP::ParallelFn>(dlsym(lib, "GOMP_parallel"));
        omp.in_parallel = reinterpret_cast<OpenMP::QueryFn>(dlsym(lib, "omp_in_parallel"));
        if (omp.parallel != nullptr && omp.in_parallel != nullptr) return omp;
        omp = OpenMP{};
    }
#endif
    return omp;
}

OpenMP g_openmp;
bool g_openmp_resolved = false;
long g_module_pid = -1;            // the process that loaded the module (set at import)
std::atomic<bool> g_team_busy{false};

// The team to use, or null for one thread. Must be called with the GIL held (it serialises the
// lookup).
const OpenMP* torch_team() {
    if (current_pid() != g_module_pid) return nullptr;  // a forked child
    if (!g_openmp_resolved) {
        g_openmp = find_openmp();
        g_openmp_resolved = true;
    }
    return g_openmp.parallel != nullptr ? &g_openmp : nullptr;
}

// Below this many elements per thread, handing rows to a second thread costs more than it saves.
// Measured (2-core AMD EPYC VM, B = 128, k = n / 10): one thread takes ~11 us for 128 x 128
// (the short-row path) and ~40 us for 128 x 512; GOMP_parallel costs a few us when torch's
// workers are spinning, tens of us when they sleep, and a k-WTA layer of 128 x 128 was ~10%
// slower on two threads than on one. at::parallel_for's grain is 2^15 too.
#ifndef RA_MIN_ELEMENTS_PER_THREAD
#define RA_MIN_ELEMENTS_PER_THREAD (std::size_t{1} << 15)
#endif
constexpr std::size_t kMinElementsPerThread = RA_MIN_ELEMENTS_PER_THREAD;
constexpr long kMaxThreads = 256;

inline std::size_t plan_threads(std::size_t rows, std::size_t n, long num_threads) {
    std::size_t threads =
        num_threads > 1 ? static_cast<std::size_t>(std::min(num_threads, kMaxThreads)) : 1;
    threads = std::min(threads, rows);
    return std::min(threads, std::max<std::size_t>(1, (rows * n) / kMinElementsPerThread));
}

void run_job(void* job) { static_cast<Job*>(job)->run_part(0); }

// Returns false on allocation failure. `team` may be null (then one thread). `out` (thresholds)
// and `mask` (k-WTA mask) may each be null.
bool kth_largest_rows(const float* in, float* out, std::size_t rows, std::size_t n, std::size_t k,
                      std::size_t threads, const Kernels& kern, const OpenMP* team,
                      float* mask = nullptr) {
    Job job;
    job.in = in;
    job.out = out;
    job.mask = mask;
    job.rows = rows;
    job.n = n;
    job.k = k;
    job.parts = std::max<std::size_t>(threads, 1);
    job.grain = std::max<std::size_t>(1, rows / (job.parts * 8));
    job.kern = kern;
    bool idle = false;
    if (job.parts > 1 && team != nullptr && team->in_parallel() == 0 &&
        g_team_busy.compare_exchange_strong(idle, true)) {
        team->parallel(run_job, &job, static_cast<unsigned>(job.parts), 0);
        g_team_busy.store(false);
    } else {
        job.run_part(0);
    }
    return job.ok.load();
}

}  // namespace ra_select

// =============================================================================================
// CPython bindings.

#ifndef RA_SELECT_NO_PYTHON

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace {

ra_select::Isa g_isa = ra_select::Isa::Scalar;
ra_select::Kernels g_kernels = ra_select::kernels_for(ra_select::Isa::Scalar);

int address_converter(PyObject* obj, void* result) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "pointer must be an int, not %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    const unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "pointer must be a non-negative address");
        }
        return 0;
    }
    if (value > static_cast<unsigned long long>(UINTPTR_MAX)) {
        PyErr_SetString(PyExc_ValueError, "pointer does not fit in an address");
        return 0;
    }
    *static_cast<void**>(result) = reinterpret_cast<void*>(static_cast<std::uintptr_t>(value));
    return 1;
}

// Shared argument checks of kth_largest and kwta_mask; sets a ValueError and returns false.
bool check_shape(Py_ssize_t rows, Py_ssize_t n, Py_ssize_t k) {
    if (rows < 0) {
        PyErr_Format(PyExc_ValueError, "rows must be >= 0, got %zd", rows);
        return false;
    }
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "n must be >= 1, got %zd", n);
        return false;
    }
    if (k < 1 || k > n) {
        PyErr_Format(PyExc_ValueError, "k must satisfy 1 <= k <= n = %zd, got %zd", n, k);
        return false;
    }
    if (static_cast<unsigned long long>(n) > 0xFFFFFFFFull) {  // 32.32 fixed-point sampling
        PyErr_Format(PyExc_ValueError, "rows longer than 2**32 - 1 are not supported, got %zd", n);
        return false;
    }
    if (rows > PY_SSIZE_T_MAX / n ||
        static_cast<unsigned long long>(rows) * static_cast<unsigned long long>(n) >
            static_cast<unsigned long long>(SIZE_MAX / sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "rows * n overflows");
        return false;
    }
    return true;
}

PyObject* py_kth_largest(PyObject*, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"in_ptr", "out_ptr", "rows", "n", "k", "num_threads", nullptr};
    void* in_ptr = nullptr;
    void* out_ptr = nullptr;
    Py_ssize_t rows = 0, n = 0, k = 0, num_threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&nnnn:kth_largest",
                                     const_cast<char**>(keywords), address_converter, &in_ptr,
                                     address_converter, &out_ptr, &rows, &n, &k, &num_threads)) {
        return nullptr;
    }
    if (!check_shape(rows, n, k)) return nullptr;
    if (rows == 0) Py_RETURN_NONE;
    if (in_ptr == nullptr || out_ptr == nullptr) {
        PyErr_SetString(PyExc_ValueError, "in_ptr and out_ptr must be non-null");
        return nullptr;
    }
    const float* in = static_cast<const float*>(in_ptr);
    float* out = static_cast<float*>(out_ptr);
    const ra_select::Kernels kern = g_kernels;
    const std::size_t threads = ra_select::plan_threads(
        static_cast<std::size_t>(rows), static_cast<std::size_t>(n), static_cast<long>(num_threads));
    const ra_select::OpenMP* team = threads > 1 ? ra_select::torch_team() : nullptr;  // GIL held
    bool ok;
    Py_BEGIN_ALLOW_THREADS
    ok = ra_select::kth_largest_rows(in, out, static_cast<std::size_t>(rows),
                                     static_cast<std::size_t>(n), static_cast<std::size_t>(k),
                                     threads, kern, team);
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyObject* py_kwta_mask(PyObject*, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"in_ptr", "mask_ptr", "thr_ptr", "rows", "n",
                                     "k",      "num_threads", nullptr};
    void* in_ptr = nullptr;
    void* mask_ptr = nullptr;
    void* thr_ptr = nullptr;
    Py_ssize_t rows = 0, n = 0, k = 0, num_threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&nnnn:kwta_mask",
                                     const_cast<char**>(keywords), address_converter, &in_ptr,
                                     address_converter, &mask_ptr, address_converter, &thr_ptr,
                                     &rows, &n, &k, &num_threads)) {
        return nullptr;
    }
    if (!check_shape(rows, n, k)) return nullptr;
    if (rows == 0) Py_RETURN_NONE;
    if (in_ptr == nullptr || mask_ptr == nullptr) {
        PyErr_SetString(PyExc_ValueError, "in_ptr and mask_ptr must be non-null");
        return nullptr;
    }
    const std::uintptr_t in_begin = reinterpret_cast<std::uintptr_t>(in_ptr);
    const std::uintptr_t mask_begin = reinterpret_cast<std::uintptr_t>(mask_ptr);
    const std::uintptr_t bytes = static_cast<std::uintptr_t>(rows) *
                                 static_cast<std::uintptr_t>(n) * sizeof(float);
    if (in_begin < mask_begin + bytes && mask_begin < in_begin + bytes) {
        PyErr_SetString(PyExc_ValueError, "mask_ptr must not overlap the input (no in-place mask)");
        return nullptr;
    }
    const float* in = static_cast<const float*>(in_ptr);
    float* mask = static_cast<float*>(mask_ptr);
    float* thr = static_cast<float*>(thr_ptr);  // may be null: thresholds not wanted
    const ra_select::Kernels kern = g_kernels;
    const std::size_t threads = ra_select::plan_threads(
        static_cast<std::size_t>(rows), static_cast<std::size_t>(n), static_cast<long>(num_threads));
    const ra_select::OpenMP* team = threads > 1 ? ra_select::torch_team() : nullptr;  // GIL held
    bool ok;
    Py_BEGIN_ALLOW_THREADS
    ok = ra_select::kth_largest_rows(in, thr, static_cast<std::size_t>(rows),
                                     static_cast<std::size_t>(n), static_cast<std::size_t>(k),
                                     threads, kern, team, mask);
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(ra_select::isa_name(g_isa)); }

PyObject* py_team(PyObject*, PyObject*) {
    return PyUnicode_FromString(ra_select::torch_team() != nullptr ? "openmp" : "none");
}

PyObject* py_best_isa(PyObject*, PyObject*) {
    return PyUnicode_FromString(ra_select::isa_name(ra_select::best_isa()));
}

PyObject* py_set_isa(PyObject*, PyObject* arg) {
    const char* name = PyUnicode_AsUTF8(arg);
    if (name == nullptr) return nullptr;
    ra_select::Isa isa;
    if (std::strcmp(name, "scalar") == 0) {
        isa = ra_select::Isa::Scalar;
    } else if (std::strcmp(name, "avx2") == 0) {
        isa = ra_select::Isa::Avx2;
    } else if (std::strcmp(name, "avx512") == 0) {
        isa = ra_select::Isa::Avx512;
    } else if (std::strcmp(name, "best") == 0) {
        isa = ra_select::best_isa();
    } else {
        PyErr_Format(PyExc_ValueError, "unknown kernel %R (scalar, avx2, avx512, best)", arg);
        return nullptr;
    }
    if (!ra_select::isa_supported(isa)) {
        PyErr_Format(PyExc_ValueError, "kernel %R is not supported by this CPU", arg);
        return nullptr;
    }
    g_isa = isa;
    g_kernels = ra_select::kernels_for(isa);
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"kth_largest", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_kth_largest)),
     METH_VARARGS | METH_KEYWORDS,
     "kth_largest(in_ptr, out_ptr, rows, n, k, num_threads) -> None\n\n"
     "For each row of the C-contiguous float32 (rows, n) buffer at address in_ptr (read only),\n"
     "write its k-th largest value (1 <= k <= n; NaN ranks above +inf, as in torch.topk) to the\n"
     "float32 (rows,) buffer at out_ptr. Releases the GIL; uses up to num_threads threads."},
    {"kwta_mask", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_kwta_mask)),
     METH_VARARGS | METH_KEYWORDS,
     "kwta_mask(in_ptr, mask_ptr, thr_ptr, rows, n, k, num_threads) -> None\n\n"
     "For each row r of the C-contiguous float32 (rows, n) buffer at in_ptr (read only), with\n"
     "t = its k-th largest value (exactly as kth_largest), write mask[r, j] = 1.0 if\n"
     "x[r, j] >= t else 0.0 to the float32 (rows, n) buffer at mask_ptr (not overlapping the\n"
     "input); NaN entries get 0.0, except when t is NaN (>= k NaNs): then exactly the NaN\n"
     "entries get 1.0. If thr_ptr is non-zero, also write t to the float32 (rows,) buffer\n"
     "there. Releases the GIL; uses up to num_threads threads."},
    {"_isa", py_isa, METH_NOARGS, "Name of the partition kernel in use (scalar, avx2, avx512)."},
    {"_team", py_team, METH_NOARGS,
     "'openmp' if calls with num_threads > 1 run on the loaded OpenMP runtime's team (torch's\n"
     "intra-op threads), 'none' if they run on the calling thread alone."},
    {"_best_isa", py_best_isa, METH_NOARGS, "Best partition kernel this CPU supports."},
    {"_set_isa", py_set_isa, METH_O,
     "Select the partition kernel: 'scalar', 'avx2', 'avx512' or 'best' (testing aid; not "
     "thread-safe with concurrent calls)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "robustact.activations._select",
    "Native row-wise k-th largest selection and k-WTA mask (float32, CPU).",
    -1,
    methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__select(void) {
    ra_select::g_module_pid = ra_select::current_pid();
    g_isa = ra_select::best_isa();
    g_kernels = ra_select::kernels_for(g_isa);
    return PyModule_Create(&module_def);
}

#endif  // RA_SELECT_NO_PYTHON
