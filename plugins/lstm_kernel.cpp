// The paper's coordinatewise LSTM optimizer (stacked LSTM layers shared by all
// coordinates, a linear head), fused for float32 on the CPU.  Built and loaded
// by l2obench.plugins.lstm_kernel; the torch implementation in plugins/lstm/ is the
// reference it is tested against (tests/test_lstm_kernel.py).
//
// Tensors are feature-major, (features, M) for M coordinates, as in plugins/lstm/cell.py; the
// LSTM states' rows may be further apart than M floats (a row stride ld >= M, the same for
// every state of a call's argument), so that the step can write rows that start on cache lines.
// Coordinates are processed in tiles of TL = VL x NT lanes (NT vector registers of
// floats, by instruction set below); everything one tile needs stays in cache.  Two entry points:
//
//   l2o_lstm_step: one optimizer step for every coordinate (no graph).
//   l2o_lstm_unroll_backward: the meta-gradient of an unroll of T steps with
//     the optimizee's gradients held constant (second derivatives dropped), and
//     optionally the gradient with respect to the LSTM inputs: for each
//     tile, the T forward steps are recomputed from the state at the start
//     of the unroll (or, given the records the steps wrote, their gate
//     activations read back and the cell states rebuilt from them: the same
//     bits without the matrix-vector products), then backpropagated through time.  Coordinates are
//     independent, so tiles are too; weight gradients are summed per fixed
//     block of tiles and the blocks in order, so the result does not depend
//     on the number of threads.
//
// The weights are given as torch's tensors, 4 L + 2 pointers: for each layer l with
// in_l inputs weight_ih (4H x in_l, torch's gate order i, f, g, o), weight_hh (4H x H),
// bias_ih, bias_hh (4H); then the head's w (H) and b (1).  The update is
// scale * (w . h_top + b).  The gradient is one flat buffer: for each layer, with
// K_l = in_l + H, W_l (4H x K_l: the columns of weight_ih then weight_hh) and b_l (4H,
// the gradient of bias_ih and of bias_hh alike); then the head's w and b.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// -- The instruction set: vector width and register blocking, decided here only.
// VL floats per vector; a tile of coordinates is NT vectors (TL = VL * NT lanes), so
// that each row of a tile fills a 64-byte cache line where it can.  GEMV_BLOCK gate
// outputs of a matrix-vector product (each NT accumulators) and OUTER_ROWS x
// OUTER_COLS weight-gradient sums are held in registers, with room left for the
// operands (32 zmm, 16 ymm or xmm): on AVX2 a broadcast weight then feeds two
// multiply-adds instead of one.  AVX2's blocks of 5 divide the paper's products without a
// remainder (the 4H = 80 gate rows of the forward and of the weight gradients, the 40 and 20
// outputs of the backward's products for H = 20), where blocks of 6 left remainders of 2 or 4
// rows (the weight gradients' 2 one row at a time), too few accumulators to hide the
// multiply-add's latency (results/benchmarks.md; measured on AVX2 only).  SIGMOIDS
// sigmoids are computed side by side, each operation on all of them in turn: a sigmoid is a
// chain of about twenty dependent operations, and a CPU that splits each 256-bit operation in
// two (Zen 1) holds too few of them in its scheduler to overlap one chain with the next by
// itself (measured on Zen 1's AVX2 only, 4 at a time; AVX-512's 8, in its 32 registers, are
// not measured; the same arithmetic, so the same bits, everywhere).
#if defined(__AVX512F__)
#define L2O_ISA "avx512"
constexpr int VL = 16, NT = 1, GEMV_BLOCK = 16, OUTER_ROWS = 4, OUTER_COLS = 4, SIGMOIDS = 8;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__tune_znver1__)
// Zen 1, where the build is tuned for it (-mtune=znver1, which GCC's -march=native sets there;
// clang defines no such macro, so its builds keep 5 x 2): the weight-gradient sums in blocks of
// 4 x 3, 7 loads for 12 multiply-adds (blocks of 5 x 2 take 7 for 10; the paper's 22 and 40
// columns leave one, summed 4 x 1).  Zen 1 loads one 256-bit vector a cycle (Zen 3 three), and
// the sums stream their operands from L2; measured on Zen 1, where the backward is about a tenth
// faster, and on Zen 3, where blocks of 4 x 3 were slower than those of 6 x 2
// (results/benchmarks.md).  Each sum adds the same products in the same order: the same bits.
#define L2O_ISA "avx2"
constexpr int VL = 8, NT = 2, GEMV_BLOCK = 5, OUTER_ROWS = 4, OUTER_COLS = 3, SIGMOIDS = 4;
#elif defined(__AVX2__) && defined(__FMA__)
#define L2O_ISA "avx2"
constexpr int VL = 8, NT = 2, GEMV_BLOCK = 5, OUTER_ROWS = 5, OUTER_COLS = 2, SIGMOIDS = 4;
#else
// Compiler vectors of 128 bits (SSE2, NEON), no streaming stores.
#define L2O_ISA "generic"
constexpr int VL = 4, NT = 2, GEMV_BLOCK = 6, OUTER_ROWS = 2, OUTER_COLS = 4, SIGMOIDS = 4;
#endif
constexpr int TL = VL * NT;

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));

// Stores of whole tiles at their boundaries that do not first read the lines they
// overwrite into the cache, where a tile's row is a whole cache line (a smaller tile would
// leave half-written lines in the write-combining buffers), for states larger than
// STREAM_BYTES: smaller ones the next step reads back from the cache.
#if defined(__AVX512F__)
constexpr bool STREAMS = true;
inline void stream_tile(float* dst, vf v) { _mm512_stream_ps(dst, (__m512)v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr bool STREAMS = true;
inline void stream_tile(float* dst, vf v) { _mm256_stream_ps(dst, (__m256)v); }
#else
constexpr bool STREAMS = false;
inline void stream_tile(float*, vf) {}
#endif
constexpr int64_t STREAM_BYTES = 2 << 20;

inline void stream_fence() {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    _mm_sfence();
#endif
}

// x clamped to [lo, hi], NaN kept: min and max return their second operand if
// either is NaN.
inline vf clamp(vf x, float lo, float hi) {
#if defined(__AVX512F__)
    return (vf)_mm512_max_ps(_mm512_set1_ps(lo), _mm512_min_ps(_mm512_set1_ps(hi), (__m512)x));
#elif defined(__AVX2__) && defined(__FMA__)
    return (vf)_mm256_max_ps(_mm256_set1_ps(lo), _mm256_min_ps(_mm256_set1_ps(hi), (__m256)x));
#else
    x = x > hi ? vf{} + hi : x;
    return x < lo ? vf{} + lo : x;
#endif
}

// -- Vector arithmetic ----------------------------------------------------------

// x in every lane, a broadcast (not vf{} + x: adding 0 is an instruction, kept for -0).
inline vf splat(float x) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(x);
#elif defined(__AVX2__) && defined(__FMA__)
    return (vf)_mm256_set1_ps(x);
#else
    vf v;
    for (int k = 0; k < VL; ++k) v[k] = x;
    return v;
#endif
}

// 2^x for x in [-125, 127] (clamped; NaN stays NaN, payload and all): x = k + f with k an integer and
// |f| <= 1/2, 2^f a degree-6 polynomial (within 2 ulp in float32), 2^k added to its
// exponent.  Adding 1.5 * 2^23 rounds x to k and leaves k in the low bits of the sum.
// No multiplication but the polynomial's: the ln 2 of exp is folded into the gate weights.
// AVX-512 scales by 2^k in one instruction (vscalefps, of k as a float) where the others add k
// to the exponent's bits and then put a NaN back: 2^f 2^k is a normal float for every clamped
// x, so both are exact and give the same bits, and a NaN's payload passes through the
// polynomial (3 of a sigmoid's ~20 operations fewer; the step ~5% faster on an Intel Xeon,
// results/benchmarks.md).  Of N vectors x[0 .. N) in place, side by side (SIGMOIDS).
template <int N>
inline void vexp2(vf* x) {
    constexpr float shift = 12582912.0f;
    vf n[N], whole[N], f[N], p[N];
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) x[k] = clamp(x[k], -125.0f, 127.0f);
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) n[k] = x[k] + shift;  // k in the low bits
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) whole[k] = n[k] - shift;  // k as a float
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) f[k] = x[k] - whole[k];
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = splat(1.5345810970757157e-4f);
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = p[k] * f[k] + 1.3399932067841291e-3f;
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = p[k] * f[k] + 9.618489071726799e-3f;
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = p[k] * f[k] + 5.550328642129898e-2f;
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = p[k] * f[k] + 2.4022646248340607e-1f;
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = p[k] * f[k] + 6.931471824645996e-1f;
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = p[k] * f[k] + 1.0f;
#if defined(__AVX512F__)
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) x[k] = (vf)_mm512_scalef_ps((__m512)p[k], (__m512)whole[k]);
#else
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) {
        const vf r = (vf)((vu)p[k] + ((vu)n[k] << 23));
        x[k] = x[k] == x[k] ? r : x[k];
    }
#endif
}

#if defined(__AVX512F__)
inline vf reciprocal_estimate(vf d) { return (vf)_mm512_rcp14_ps((__m512)d); }
#elif defined(__AVX2__) && defined(__FMA__)
inline vf reciprocal_estimate(vf d) { return (vf)_mm256_rcp_ps((__m256)d); }
#endif

// 1 / d: the hardware's estimate (reciprocal_estimate) refined by one Newton step (within an ulp or two of the
// quotient) where there is one, else the division.  d >= 1 here; for d above 2^126 (an
// exponential near the clamp's top) the quotient is below 1.2e-38 and this gives 0.  Of N
// vectors in place, side by side.
template <int N>
inline void reciprocal(vf* d) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    vf y[N];
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) y[k] = reciprocal_estimate(d[k]);
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) d[k] = y[k] + y[k] * (1.0f - d[k] * y[k]);
#else
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) d[k] = 1.0f / d[k];
#endif
}

constexpr float LOG2E = 1.44269504088896341f;

// sigmoid(z) = 1 / (1 + 2^y) from y = -z log2(e): the gate weights are stored times
// -log2(e), so their product gives y.  Of N vectors in place, side by side.
template <int N>
inline void sigmoids_of_exponent(vf* y) {
    vexp2<N>(y);
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) y[k] = 1.0f + y[k];
    reciprocal<N>(y);
}

// ln(x) for normal x > 0 (inf and NaN as they are): Cephes' logf, x = m 2^e with m in
// [sqrt(1/2), sqrt(2)) and a polynomial in m - 1.
inline vf vlog(vf x) {
    const vi bits = (vi)x;
    vi e = (bits >> 23) - 126;                    // x = m 2^e, m in [1/2, 1)
    vf m = (vf)((bits & 0x007FFFFF) | 0x3F000000);
    const vi small = m < 0.707106781186547524f;   // then m 2^e = (2m) 2^(e-1)
    e = e + small;
    m = m + (vf)((vi)m & small) - 1.0f;
    const vf ef = __builtin_convertvector(e, vf);
    const vf z = m * m;
    vf y = splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y = y + ef * -2.12194440e-4f;
    y = y - 0.5f * z;
    const vf r = m + y + ef * 0.693359375f;
    return x <= 3.40282347e38f ? r : x;
}

// The paper's log/sign preprocessing (Appendix A) of a tile of raw gradients g into
// the two feature rows of x, as plugins/lstm/preprocess.py computes it: (log|g| / p,
// sign g) where |g| >= threshold = e^-p, else (-1, g e^p).  pre = {p, threshold, e^p}.
inline void log_sign(const vf* g, const float* pre, vf* x) {
    for (int s = 0; s < NT; ++s) {
        const vf magnitude = (vf)((vi)g[s] & 0x7FFFFFFF);
        const auto big = magnitude >= pre[1];  // false for NaN: the small branch, as torch.where
        const vf log_part = vlog(magnitude < 1e-30f ? splat(1e-30f) : magnitude) / pre[0];
        const vf sign = g[s] > 0.0f ? splat(1.0f) : splat(-1.0f);
        x[s] = big ? log_part : splat(-1.0f);
        x[NT + s] = big ? sign : g[s] * pre[2];
    }
}

// Rows of a tile are NT vectors: row r's lanes are in[r * NT .. r * NT + NT).

// out[o] = bias[o] + sum_j A[j * n_out + o] * in[j] for o in [o0, o0 + B), lane by lane: a
// matrix with n_red rows of n_out weights applied to a tile; B outputs at a time in
// registers, each broadcast weight multiplied into the NT vectors of its row.
template <int B>
inline void gemv_block(const float* A, int n_out, int o0, int n_red, const vf* in, vf* out, const float* bias) {
    vf acc[B][NT];
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 4
        for (int s = 0; s < NT; ++s) acc[b][s] = splat(bias ? bias[o0 + b] : 0.0f);
#pragma GCC unroll 2
    for (int j = 0; j < n_red; ++j) {
        vf x[NT];
#pragma GCC unroll 4
        for (int s = 0; s < NT; ++s) x[s] = in[j * NT + s];
        const float* a = A + (int64_t)j * n_out + o0;
#pragma GCC unroll 16
        for (int b = 0; b < B; ++b) {
            const vf w = splat(a[b]);
#pragma GCC unroll 4
            for (int s = 0; s < NT; ++s) acc[b][s] += w * x[s];
        }
    }
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 4
        for (int s = 0; s < NT; ++s) out[(o0 + b) * NT + s] = acc[b][s];
}

// The last n < B outputs from o0, in one block of n.
template <int B>
inline void gemv_tail(const float* A, int n_out, int o0, int n, int n_red, const vf* in, vf* out,
                      const float* bias) {
    if constexpr (B > 0) {
        if (n == B)
            gemv_block<B>(A, n_out, o0, n_red, in, out, bias);
        else
            gemv_tail<B - 1>(A, n_out, o0, n, n_red, in, out, bias);
    }
}

// gemv for outputs o_begin .. n_out.
inline void gemv(const float* A, int n_out, int n_red, const vf* in, vf* out, const float* bias,
                 int o_begin = 0) {
    int o = o_begin;
    for (; o + GEMV_BLOCK <= n_out; o += GEMV_BLOCK) gemv_block<GEMV_BLOCK>(A, n_out, o, n_red, in, out, bias);
    gemv_tail<GEMV_BLOCK - 1>(A, n_out, o, n_out - o, n_red, in, out, bias);
}

inline float hsum(vf v) {
    float s = 0.0f;
    for (int k = 0; k < VL; ++k) s += v[k];
    return s;
}

// G[r * K + k] += sum_t D[t][r] * X[t][k], lane by lane (a tile's NT vectors into one);
// D is (T, R) rows of tiles, X (T, K) (row strides ld, lx in rows).  OUTER_ROWS x
// OUTER_COLS blocks of accumulators.  The lanes are summed once per block of tiles, not
// per tile: a horizontal sum costs as much as the products of a few steps.
template <int BR, int BK>
inline void outer_block(const vf* D, int ld, const vf* X, int lx, int T, int r0, int k0, int K, vf* G) {
    vf acc[BR][BK];
    for (int i = 0; i < BR; ++i)
        for (int j = 0; j < BK; ++j) acc[i][j] = G[(int64_t)(r0 + i) * K + k0 + j];
    for (int t = 0; t < T; ++t) {
        const vf* d = D + ((int64_t)t * ld + r0) * NT;
        const vf* x = X + ((int64_t)t * lx + k0) * NT;
#pragma GCC unroll 4
        for (int s = 0; s < NT; ++s)
#pragma GCC unroll 8
            for (int i = 0; i < BR; ++i)
#pragma GCC unroll 8
                for (int j = 0; j < BK; ++j) acc[i][j] += d[i * NT + s] * x[j * NT + s];
    }
    for (int i = 0; i < BR; ++i)
        for (int j = 0; j < BK; ++j) G[(int64_t)(r0 + i) * K + k0 + j] = acc[i][j];
}

template <int BR>
inline void outer_rows(const vf* D, int ld, const vf* X, int lx, int T, int r0, int K, vf* G) {
    int k = 0;
    for (; k + OUTER_COLS <= K; k += OUTER_COLS) outer_block<BR, OUTER_COLS>(D, ld, X, lx, T, r0, k, K, G);
    for (; k < K; ++k) outer_block<BR, 1>(D, ld, X, lx, T, r0, k, K, G);
}

inline void outer(const vf* D, int ld, const vf* X, int lx, int T, int R, int K, vf* G) {
    int r = 0;
    for (; r + OUTER_ROWS <= R; r += OUTER_ROWS) outer_rows<OUTER_ROWS>(D, ld, X, lx, T, r, K, G);
    for (; r < R; ++r) outer_rows<1>(D, ld, X, lx, T, r, K, G);
}

// Copy lanes m0 .. m0+n of `rows` rows (row stride M) into tiles, zero-padding the rest.
inline void gather(const float* src, int rows, int64_t M, int64_t m0, int n, vf* dst) {
    if (n == TL) {  // whole tiles: NT unaligned vector loads a row
        for (int r = 0; r < rows; ++r) std::memcpy(&dst[r * NT], src + (int64_t)r * M + m0, sizeof(vf) * NT);
        return;
    }
    for (int r = 0; r < rows; ++r) {
        vf v[NT] = {};
        std::memcpy(v, src + (int64_t)r * M + m0, sizeof(float) * n);
        for (int s = 0; s < NT; ++s) dst[r * NT + s] = v[s];
    }
}

inline void scatter(const vf* src, int rows, int64_t M, int64_t m0, int n, float* dst) {
    if (n == TL) {
        for (int r = 0; r < rows; ++r) std::memcpy(dst + (int64_t)r * M + m0, &src[r * NT], sizeof(vf) * NT);
        return;
    }
    for (int r = 0; r < rows; ++r) std::memcpy(dst + (int64_t)r * M + m0, &src[r * NT], sizeof(float) * n);
}

// scatter for the step's new states, streamed (with `stream`) where stream_tile can (whole
// tiles on their boundaries): a batch of optimizees writes states far larger than the
// cache, and the next step reads them back anyway.
inline void scatter_stream(const vf* src, int rows, int64_t M, int64_t m0, int n, float* dst, bool stream) {
    for (int r = 0; r < rows; ++r) {
        float* row = dst + (int64_t)r * M + m0;
        if (n < TL)
            std::memcpy(row, &src[r * NT], sizeof(float) * n);
        else if (stream && ((uintptr_t)row % (sizeof(vf) * NT)) == 0)
            for (int s = 0; s < NT; ++s) stream_tile(row + s * VL, src[r * NT + s]);
        else
            std::memcpy(row, &src[r * NT], sizeof(vf) * NT);
    }
}

// A tile of the LSTM's input features: gathered (pre null), or the log/sign features of
// the raw gradients x (one row).
inline void features(const float* x, int F, int64_t M, int64_t m0, int n, const float* pre, vf* dst) {
    if (!pre) return gather(x, F, M, m0, n, dst);
    vf g[NT];
    gather(x, 1, M, m0, n, g);
    log_sign(g, pre, dst);
}

// Ask for the lines of lanes m .. m+TL of `rows` rows, to read or to write: the rows
// of a tile are H x M apart, too many streams for the hardware prefetchers to follow.
inline void prefetch(const float* src, int rows, int64_t M, int64_t m) {
    for (int r = 0; r < rows; ++r) __builtin_prefetch(src + (int64_t)r * M + m, 0, 3);
}

inline void prefetch_write(const float* dst, int rows, int64_t M, int64_t m) {
    for (int r = 0; r < rows; ++r) __builtin_prefetch(dst + (int64_t)r * M + m, 1, 3);
}

struct Net {
    int L, H, F;
    const float* const* weights;
    float scale;
    int in(int l) const { return l == 0 ? F : H; }
    int K(int l) const { return in(l) + H; }
    const float* weight_ih(int l) const { return weights[4 * l]; }
    const float* weight_hh(int l) const { return weights[4 * l + 1]; }
    const float* head_w() const { return weights[4 * L]; }
    float head_b() const { return weights[4 * L + 1][0]; }
    // W_l (4H x K_l), the columns of weight_ih then weight_hh.
    std::vector<float> W(int l) const {
        const int R = 4 * H, n = in(l), k = K(l);
        std::vector<float> out((size_t)R * k);
        for (int r = 0; r < R; ++r) {
            std::copy(weight_ih(l) + (size_t)r * n, weight_ih(l) + (size_t)(r + 1) * n, out.begin() + (size_t)r * k);
            std::copy(weight_hh(l) + (size_t)r * H, weight_hh(l) + (size_t)(r + 1) * H,
                      out.begin() + (size_t)r * k + n);
        }
        return out;
    }
    // Offsets in the gradient of W_l, b_l, the head.
    int64_t w(int l) const {
        int64_t at = 0;
        for (int k = 0; k < l; ++k) at += (int64_t)4 * H * K(k) + 4 * H;
        return at;
    }
    int64_t b(int l) const { return w(l) + (int64_t)4 * H * K(l); }
    int64_t head() const { return w(L); }
    int64_t size() const { return head() + H + 1; }
};

// W_l (given, net.W(l)) transposed (K x 4H) and then b_l, for the forward's product: the rows of the
// sigmoid gates (i, f, o) times -log2(e) and those of g times -2 log2(e), so that one
// sigmoid_of_exponent of the product serves every gate, tanh(z) = 2 sigmoid(2z) - 1 as
// plugins/lstm/cell.py computes it.
std::vector<float> gate_weights(const Net& net, int l, const std::vector<float>& W) {
    const int H = net.H, R = 4 * H, K = net.K(l);
    const float *b_ih = net.weights[4 * l + 2], *b_hh = net.weights[4 * l + 3];
    std::vector<float> out((size_t)(K + 1) * R);
    for (int r = 0; r < R; ++r) {
        const float factor = (r >= 2 * H && r < 3 * H ? -2.0f : -1.0f) * LOG2E;
        for (int k = 0; k < K; ++k) out[(size_t)k * R + r] = factor * W[(size_t)r * K + k];
        out[(size_t)K * R + r] = factor * (b_ih[r] + b_hh[r]);
    }
    return out;
}

// The cell's update for vectors q .. q + N of a tile from its gate activations act (the rows of
// i, f, g, o, Hn vectors each): the new cell state into c_new, tanh of it into tanh_c (if given),
// the new hidden state into h_new.
template <int N>
inline void cell_updates(int q, const vf* act, int Hn, const vf* c, vf* c_new, vf* tanh_c, vf* h_new) {
    vf cn[N], tc[N];
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) {
        const vf i = act[q + k], f = act[Hn + q + k], g = act[2 * Hn + q + k];
        cn[k] = f * c[q + k] + i * g;
        tc[k] = (-2.0f * LOG2E) * cn[k];
    }
    sigmoids_of_exponent<N>(tc);
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) {
        tc[k] = 2.0f * tc[k] - 1.0f;
        c_new[q + k] = cn[k];
        if (tanh_c) tanh_c[q + k] = tc[k];
        h_new[q + k] = act[3 * Hn + q + k] * tc[k];
    }
}

// cell_updates for the whole tile, SIGMOIDS vectors at a time.
inline void cell_update_all(const vf* act, int Hn, const vf* c, vf* c_new, vf* tanh_c, vf* h_new) {
    int q = 0;
    for (; q + SIGMOIDS <= Hn; q += SIGMOIDS) cell_updates<SIGMOIDS>(q, act, Hn, c, c_new, tanh_c, h_new);
    for (; q < Hn; ++q) cell_updates<1>(q, act, Hn, c, c_new, tanh_c, h_new);
}

// One layer's step for a tile: gates from the stacked input xin (K rows) with the
// gate_weights WT, the activations (i, f, g, o) into act, then cell_update_all.  A
// gate's rows are H rows of NT vectors, so the elementwise part runs over H * NT vectors.
// With record, the activations (i, f, g, o, as act is left) are also written there, a vector at
// a time in the pass that makes g from its sigmoid (streamed with `stream`, to start on vectors'
// boundaries), before the cell updates' arithmetic.
inline void cell_forward(const Net& net, int l, const float* WT, const vf* xin, const vf* c, vf* act, vf* c_new,
                         vf* tanh_c, vf* h_new, float* record = nullptr, bool stream = false) {
    const int H = net.H, K = net.K(l), Hn = H * NT;
    gemv(WT, 4 * H, K, xin, act, WT + (int64_t)K * 4 * H);
    int r = 0;
    for (; r + SIGMOIDS <= 4 * Hn; r += SIGMOIDS) sigmoids_of_exponent<SIGMOIDS>(act + r);
    for (; r < 4 * Hn; ++r) sigmoids_of_exponent<1>(act + r);
    for (int q = 0; q < Hn; ++q) {
        const vf g = 2.0f * act[2 * Hn + q] - 1.0f;
        act[2 * Hn + q] = g;
        if (record) {
            const vf gates[4] = {act[q], act[Hn + q], g, act[3 * Hn + q]};
            for (int k = 0; k < 4; ++k) {
                float* dst = record + (int64_t)(k * Hn + q) * VL;
                if (STREAMS && stream)
                    stream_tile(dst, gates[k]);
                else
                    std::memcpy(dst, &gates[k], sizeof(vf));
            }
        }
    }
    cell_update_all(act, Hn, c, c_new, tanh_c, h_new);
}

// cell_forward for a tile whose activations a step recorded (rec, 4H rows): the same new
// cell state, tanh of it and hidden state, to the bit, without the matrix-vector product
// and the gates' sigmoids.
inline void cell_from_record(const Net& net, const float* rec, const vf* c, vf* act, vf* c_new, vf* tanh_c,
                             vf* h_new) {
    const int Hn = net.H * NT;
    std::memcpy(act, rec, sizeof(vf) * 4 * Hn);
    cell_update_all(act, Hn, c, c_new, tanh_c, h_new);
}

// Where layer l of a tile starts in a step's record: tiles in order, each its layers' 4H rows
// of TL lanes.
inline int64_t record_at(const Net& net, int64_t tile, int l) {
    return ((tile * net.L + l) * 4 * net.H) * (int64_t)TL;
}

// fn(worker, workers) on up to min(threads, n) workers; `workers` is how many
// actually run (OpenMP may give fewer than asked for).  With OpenMP these are the
// threads of the OpenMP runtime torch has loaded (the library asks for
// libgomp.so.1, which is torch's when torch is imported first), so they are not a
// second set of threads competing with torch's for the cores.
template <class Fn>
void parallel(int threads, int64_t n, Fn fn) {
    threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, n));
    if (threads == 1) {
        fn(0, 1);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    fn(omp_get_thread_num(), omp_get_num_threads());
#else
    std::vector<std::thread> pool;
    for (int k = 1; k < threads; ++k) pool.emplace_back(fn, k, threads);
    fn(0, threads);
    for (auto& th : pool) th.join();
#endif
}

}  // namespace

extern "C" {

int l2o_lstm_abi() { return 7; }

// The instruction set this library was built for (avx512, avx2, generic).
const char* l2o_lstm_isa() { return L2O_ISA; }

// Its vectors and register blocking, as "vectors 8x2, gemv 5, outer 5x2, sigmoids 4": VL x NT,
// GEMV_BLOCK, OUTER_ROWS x OUTER_COLS, SIGMOIDS (the tuning chosen at the top of this file).
const char* l2o_lstm_blocking() {
    static const std::string text = [] {  // made once, thread-safe (a function's static)
        char out[96];
        std::snprintf(out, sizeof out, "vectors %dx%d, gemv %d, outer %dx%d, sigmoids %d", VL, NT, GEMV_BLOCK,
                      OUTER_ROWS, OUTER_COLS, SIGMOIDS);
        return std::string(out);
    }();
    return text.c_str();
}

// The floats of one step's record for M coordinates (see l2o_lstm_step).
int64_t l2o_lstm_record_floats(int L, int H, int64_t M) { return (M + TL - 1) / TL * L * 4 * H * TL; }

// One step for all M coordinates: x (F x M) and, per layer, h_in[l], c_in[l] (H rows of M,
// ld_in apart) give h_out[l], c_out[l] (H rows, ld_out apart) and the update out (M).  With
// pre (p, e^-p, e^p) x is the raw gradient (1 x M) and its F = 2 features are the log/sign
// preprocessing's.  With record (l2o_lstm_record_floats(L, H, M) floats) the step also writes
// every layer's gate activations there, for l2o_lstm_unroll_backward's records.
void l2o_lstm_step(int L, int H, int F, int64_t M, const float* const* weights, float scale, const float* x,
                   const float* pre, const float* const* h_in, const float* const* c_in, int64_t ld_in,
                   float* const* h_out, float* const* c_out, int64_t ld_out, float* out, float* record,
                   int threads) {
    const Net net{L, H, F, weights, scale};
    std::vector<std::vector<float>> WT;
    for (int l = 0; l < L; ++l) WT.push_back(gate_weights(net, l, net.W(l)));
    const float* w_head = net.head_w();
    const float b_head = net.head_b();
    const int64_t tiles = (M + TL - 1) / TL;
    const bool stream = STREAMS && (int64_t)2 * L * H * M * (int64_t)sizeof(float) > STREAM_BYTES;
    // streamed where large and on vectors' boundaries (every tile's layer is TL-float aligned
    // within the record)
    const bool stream_record = l2o_lstm_record_floats(L, H, M) * (int64_t)sizeof(float) > STREAM_BYTES &&
                               (uintptr_t)record % sizeof(vf) == 0;
    constexpr int64_t AHEAD = 32;             // lanes to prefetch ahead: two cache lines of each row
    constexpr int64_t LINE = 64 / sizeof(float);  // lanes per cache line
    // Tiles are handed out in chunks from a shared counter, not as fixed halves: where one core
    // runs slower for a while (a shared host), the other takes more of them.  Chunks of 32 tiles,
    // smaller where a thread's share is under 8 chunks of 32, and whole cache lines of every row
    // (two tiles where a tile is half a line), so that no line is written by two threads.  Each
    // coordinate's result is its own, so the split changes no number.
    constexpr int64_t TILES_A_LINE = LINE > TL ? LINE / TL : 1;
    const int64_t share = std::max<int64_t>(1, std::min<int64_t>(32, tiles / (8 * std::max(1, threads))));
    const int64_t chunk = (share + TILES_A_LINE - 1) / TILES_A_LINE * TILES_A_LINE;
    std::atomic<int64_t> next{0};
    parallel(threads, tiles, [&](int, int) {
        const int Hn = H * NT;
        std::vector<vf> xin((std::max(F, H) + H) * NT), c(Hn), act(4 * Hn), c_new(Hn), h_new(Hn);
        for (int64_t first; (first = next.fetch_add(chunk)) < tiles;)
        for (int64_t tile = first, last = std::min(tiles, first + chunk); tile < last; ++tile) {
            const int64_t m0 = tile * TL;
            const int n = (int)std::min<int64_t>(TL, M - m0);
            // Once per line of each row, spread over a line's tiles where a tile is less than
            // a line: the rows read at its first tile (ahead into the next chunk too, whichever
            // thread takes it), the rows written at its last (within this chunk only, whose
            // lines this thread alone writes).
            const int64_t ahead = m0 + AHEAD;
            const bool reads = ahead < tiles * TL && m0 % LINE == 0;
            const bool writes = ahead - TL < last * TL && !stream && (m0 + TL) % LINE == 0;
            if (reads) prefetch(x, pre ? 1 : F, M, ahead);
            features(x, F, M, m0, n, pre, xin.data());
            for (int l = 0; l < L; ++l) {
                if (reads) prefetch(h_in[l], H, ld_in, ahead), prefetch(c_in[l], H, ld_in, ahead);
                if (writes)
                    prefetch_write(h_out[l], H, ld_out, ahead - TL), prefetch_write(c_out[l], H, ld_out, ahead - TL);
                const int in = net.in(l);
                gather(h_in[l], H, ld_in, m0, n, xin.data() + in * NT);
                gather(c_in[l], H, ld_in, m0, n, c.data());
                cell_forward(net, l, WT[l].data(), xin.data(), c.data(), act.data(), c_new.data(), nullptr,
                             h_new.data(), record ? record + record_at(net, tile, l) : nullptr, stream_record);
                scatter_stream(h_new.data(), H, ld_out, m0, n, h_out[l], stream);
                scatter_stream(c_new.data(), H, ld_out, m0, n, c_out[l], stream);
                std::copy(h_new.begin(), h_new.end(), xin.begin());  // the next layer's input
            }
            vf u[NT];
            for (int s = 0; s < NT; ++s) {
                u[s] = splat(b_head);
                for (int j = 0; j < H; ++j) u[s] += w_head[j] * h_new[j * NT + s];
                u[s] *= scale;
            }
            scatter(u, 1, M, m0, n, out);
        }
        stream_fence();  // the streamed states are in memory before the step returns
    });
}

// The meta-gradient of an unroll: x (T x F x M) are the LSTM inputs of steps
// 0 .. T-1 (with pre as in l2o_lstm_step, the raw gradients, T x 1 x M), h0[l], c0[l]
// (H rows of M, ld0 apart) the state before step 0, d_out (T x M) the gradient of the meta-loss with
// respect to each step's update.  Adds the gradient with respect to the parameters into
// grad (the gradient's flat layout); with d_x (T x F x M, pre null) writes the gradient
// with respect to the LSTM inputs x there (an input layer's, before the LSTM).  With records
// (T pointers: the records l2o_lstm_step wrote at steps 0 .. T-1 of this unroll, from these
// weights, inputs and first state) the forward is not recomputed but read from them: the
// same result to the bit.
void l2o_lstm_unroll_backward(int L, int H, int F, int64_t M, int T, const float* const* weights, float scale,
                              const float* x, const float* pre, const float* const* h0, const float* const* c0,
                              int64_t ld0, const float* d_out,
                              float* grad, float* d_x, const float* const* records, int threads) {
    const Net net{L, H, F, weights, scale};
    const int64_t P = net.size();
    std::vector<std::vector<float>> WT, W;
    for (int l = 0; l < L; ++l) W.push_back(net.W(l)), WT.push_back(gate_weights(net, l, W[l]));
    const float* w_head = net.head_w();
    const int64_t tiles = (M + TL - 1) / TL;
    // Fixed blocks of tiles, summed in order: the same result for any thread count.
    const int64_t blocks = std::min<int64_t>(tiles, 64);
    std::vector<float> partial((size_t)(blocks * P), 0.0f);
    std::atomic<int64_t> next{0};

    // Per-tile buffers, in rows of a tile (NT vectors each): for layer l and step t, the
    // stacked input [layer input; h_{t}] (T + 1 slots, so the last h has a place), the
    // activations (overwritten by the gate gradients), c_t (T + 1), tanh(c_{t+1}).
    std::vector<int64_t> off_in(L), off_act(L), off_c(L), off_tc(L);
    int64_t per_tile = 0;
    for (int l = 0; l < L; ++l) {
        off_in[l] = per_tile, per_tile += (int64_t)(T + 1) * net.K(l);
        off_act[l] = per_tile, per_tile += (int64_t)T * 4 * H;
        off_c[l] = per_tile, per_tile += (int64_t)(T + 1) * H;
        off_tc[l] = per_tile, per_tile += (int64_t)T * H;
    }

    parallel(threads, blocks, [&](int, int) {
        const int Hn = H * NT;
        // Gv: the block's gradient lane by lane (the flat layout, one vector per number).
        std::vector<vf> buf(per_tile * NT), dh((size_t)L * Hn), dc((size_t)L * Hn), d_in((std::max(F, H) + H) * NT),
            Gv(P);
        // row(offset): the tile buffer's row at that offset (in rows)
        auto row = [&](int64_t offset) { return buf.data() + offset * NT; };
        vf* d_head = Gv.data() + net.head();
        for (int64_t block; (block = next.fetch_add(1)) < blocks;) {
            const int64_t first = tiles * block / blocks, last = tiles * (block + 1) / blocks;
            std::fill(Gv.begin(), Gv.end(), vf{});
            for (int64_t tile = first; tile < last; ++tile) {
                const int64_t m0 = tile * TL;
                const int n = (int)std::min<int64_t>(TL, M - m0);
                // The forward, recomputed.
                for (int l = 0; l < L; ++l) {
                    gather(h0[l], H, ld0, m0, n, row(off_in[l] + net.in(l)));
                    gather(c0[l], H, ld0, m0, n, row(off_c[l]));
                }
                for (int t = 0; t < T; ++t) {
                    features(x + (int64_t)t * (pre ? 1 : F) * M, F, M, m0, n, pre, row(off_in[0] + (int64_t)t * net.K(0)));
                    for (int l = 0; l < L; ++l) {
                        const int K = net.K(l);
                        vf* xin = row(off_in[l] + (int64_t)t * K);
                        vf* h_new = row(off_in[l] + (int64_t)(t + 1) * K + net.in(l));
                        if (records) {
                            const float* rec = records[t] + record_at(net, tile, l);
                            if (t + 1 < T)  // the next step's rows of this tile and layer, a step ahead
                                for (int k = 0; k < 4 * H * TL; k += 64 / (int)sizeof(float))
                                    __builtin_prefetch(records[t + 1] + record_at(net, tile, l) + k, 0, 3);
                            cell_from_record(net, rec, row(off_c[l] + (int64_t)t * H),
                                             row(off_act[l] + (int64_t)t * 4 * H),
                                             row(off_c[l] + (int64_t)(t + 1) * H), row(off_tc[l] + (int64_t)t * H),
                                             h_new);
                        } else {
                            cell_forward(net, l, WT[l].data(), xin, row(off_c[l] + (int64_t)t * H),
                                         row(off_act[l] + (int64_t)t * 4 * H),
                                         row(off_c[l] + (int64_t)(t + 1) * H), row(off_tc[l] + (int64_t)t * H),
                                         h_new);
                        }
                        if (l + 1 < L) std::copy(h_new, h_new + Hn, row(off_in[l + 1] + (int64_t)t * net.K(l + 1)));
                    }
                }
                // Backpropagation through time.
                std::fill(dh.begin(), dh.end(), vf{});
                std::fill(dc.begin(), dc.end(), vf{});
                for (int t = T - 1; t >= 0; --t) {
                    vf g_top[NT];
                    gather(d_out + (int64_t)t * M, 1, M, m0, n, g_top);
                    const vf* top = row(off_in[L - 1] + (int64_t)(t + 1) * net.K(L - 1) + net.in(L - 1));
                    vf* dh_top = dh.data() + (size_t)(L - 1) * Hn;
                    for (int s = 0; s < NT; ++s) {
                        g_top[s] *= scale;
                        d_head[H] += g_top[s];
                        for (int j = 0; j < H; ++j) {
                            d_head[j] += g_top[s] * top[j * NT + s];
                            dh_top[j * NT + s] += g_top[s] * w_head[j];
                        }
                    }
                    for (int l = L - 1; l >= 0; --l) {
                        vf* a = row(off_act[l] + (int64_t)t * 4 * H);
                        const vf* c_prev = row(off_c[l] + (int64_t)t * H);
                        const vf* tc = row(off_tc[l] + (int64_t)t * H);
                        vf* dhl = dh.data() + (size_t)l * Hn;
                        vf* dcl = dc.data() + (size_t)l * Hn;
                        for (int q = 0; q < Hn; ++q) {
                            const vf i = a[q], f = a[Hn + q], g = a[2 * Hn + q], o = a[3 * Hn + q];
                            const vf d_c = dcl[q] + dhl[q] * o * (1.0f - tc[q] * tc[q]);
                            a[q] = d_c * g * i * (1.0f - i);
                            a[Hn + q] = d_c * c_prev[q] * f * (1.0f - f);
                            a[2 * Hn + q] = d_c * i * (1.0f - g * g);
                            a[3 * Hn + q] = dhl[q] * tc[q] * o * (1.0f - o);
                            dcl[q] = d_c * f;
                        }
                        // d[input; h_prev] = W_l^T d_gates; layer 0's input gradient only for d_x.
                        const int in = net.in(l), K = net.K(l);
                        gemv(W[l].data(), K, 4 * H, a, d_in.data(), nullptr, l == 0 && !d_x ? in : 0);
                        if (l == 0 && d_x) scatter(d_in.data(), in, M, m0, n, d_x + (int64_t)t * in * M);
                        if (l > 0)
                            for (int q = 0; q < Hn; ++q) dh[(size_t)(l - 1) * Hn + q] += d_in[q];
                        std::copy(d_in.begin() + in * NT, d_in.begin() + (in + H) * NT, dhl);
                    }
                }
                // Weight and bias gradients: one pass over the tile's T steps.
                for (int l = 0; l < L; ++l) {
                    const int K = net.K(l);
                    const vf* D = row(off_act[l]);
                    outer(D, 4 * H, row(off_in[l]), K, T, 4 * H, K, Gv.data() + net.w(l));
                    vf* d_bias = Gv.data() + net.b(l);
                    for (int t = 0; t < T; ++t)
                        for (int r = 0; r < 4 * H; ++r)
                            for (int s = 0; s < NT; ++s) d_bias[r] += D[((int64_t)t * 4 * H + r) * NT + s];
                }
            }
            float* G = partial.data() + block * P;
            for (int64_t k = 0; k < P; ++k) G[k] = hsum(Gv[k]);
        }
    });
    for (int64_t block = 0; block < blocks; ++block)
        for (int64_t k = 0; k < P; ++k) grad[k] += partial[(size_t)(block * P + k)];
}

}  // extern "C"
