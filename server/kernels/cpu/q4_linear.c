/* y = x @ W (+ bias) on CPU with W kept 4-bit ("Q4 panels", GGUF Q4_1 blocks regrouped).
 *
 * W [K, N] is stored in panels of 16 output columns, like packed_linear.c, N padded to a
 * multiple of 16 with zero columns (q = d = m = 0), K a multiple of 32:
 *   qs     uint8 [ceil(N / 16)][K][8]: byte j holds column 16p + j's q in its low nibble and
 *          column 16p + j + 8's in its high nibble;
 *   scales float [ceil(N / 16)][K / 32][16]: d of (column 16p + c, block of 32 k's b);
 *   mins   float, the same layout: m.
 * W[k, n] = d * q + m, in float32. The scales come from float16 (11-bit mantissa) and q <= 15
 * (4 bits), so d * q is exact in float32 and fma(q, d, m) equals q * d + m bit for bit: the
 * weights are well defined however they are computed, and q4_linear.dequantize (torch) gives
 * them exactly. (Scales with wider mantissas would make the two ways differ in the last bit.)
 *
 * Lanes run over output columns. Per k a panel's 8 bytes are widened to 16 nibbles in column
 * order (low nibbles: columns 0-7, high: 8-15) and converted to float, and each row of a tile of
 * rows of x adds x[r][k] * q into its block sums (one FMA a vector). Per block of 32 k's:
 *   sum_k x_k (d q_k + m) = d * (sum_k x_k q_k) + m * (sum_k x_k),
 * so the block's d and m are applied once, to the sums, and x's block sums are taken once per
 * call: the k loop does no dequantizing FMAs at all (measured against dequantizing every k in
 * registers, 1 thread, Zen 3: 1.0 against 1.4 ns per panel row at 1 row, 1.3 against 1.9 at
 * 2, 2.1 against 2.7 at 4). The result equals x @ W up to float32 rounding (the tests hold it
 * within 1e-5 relative of float64), not bit for bit with a product over dequantized weights.
 * The per-row totals live in a small array on the stack, updated once a block.
 *
 * A decode step (1-8 rows) streams ~0.75 bytes a weight (4-bit q, d and m as float32 per 32)
 * instead of float32's 4. Threads split the panels (OpenMP, torch's runtime); every column is
 * summed in the same order whatever the thread count.
 *
 * GCC vector extensions over vector_math.h's `vf`, compiled with -march=native: 16 lanes (one
 * vector a panel row) with AVX-512, 8 (two) with AVX2, tiles sized to the register file; the
 * bytes are widened with intrinsics (GCC scalarizes a vector conversion from bytes). Only
 * parrot_q4_linear is public: the file is compiled into one library with the others.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define Q4_PANEL 16
#define Q4_BLOCK 32
#define Q4_VPP (Q4_PANEL / VF_LANES) /* native vectors per panel row */
/* Each block prefetches the block this many ahead (1 KB of a panel's q's, a line each of its
 * scales and mins; past a panel's end, the next panel's): 1 row, 2 threads, SmolLM2's layers
 * from memory 6.1 -> 5.2 ms (2 ahead 5.1, 8 ahead 5.1); 4 rows 9.7 -> 8.6 (one-off harness, the
 * variants interleaved in one process, medians of 31, Zen 3, 2026-11-30). */
#define Q4_AHEAD 4

/* The q's of one panel row (8 bytes of qs) as Q4_VPP float vectors, in column order. GCC
 * scalarizes a vector conversion from bytes, so the native widths widen the bytes with
 * intrinsics (vpmovzxbd); the other width (tests only) goes lane by lane. */
#if VF_LANES == 8
static inline vi q4_widen(const uint8_t *p) { /* byte j -> lane j */
#if defined(__AVX2__)
    return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vi v;
    for (int j = 0; j < 8; j++) v[j] = p[j];
    return v;
#endif
}

static inline void q4_nibbles(const uint8_t *p, vf *w) {
    vi v = q4_widen(p);
    w[0] = __builtin_convertvector(v & 15, vf);
    w[1] = __builtin_convertvector(v >> 4, vf);
}
#elif VF_LANES == 16
static inline vi q4_widen(const uint8_t *p) { /* byte j -> lanes j and j + 8 */
#if defined(__AVX512F__)
    uint64_t u;
    memcpy(&u, p, 8);
    return (vi)_mm512_cvtepu8_epi32(_mm_set1_epi64x((long long)u));
#else
    vi v;
    for (int j = 0; j < 16; j++) v[j] = p[j & 7];
    return v;
#endif
}

static inline void q4_nibbles(const uint8_t *p, vf *w) {
    const vi shift = {0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4};
    w[0] = __builtin_convertvector((q4_widen(p) >> shift) & 15, vf);
}
#else
#error "q4_linear.c: VF_LANES must be 8 or 16"
#endif

/* MM rows of x against PP panels from panel p0; x, xsum and y point at the tile's first row.
 * Per block: s = sum_k x_k q_k (the q's as floats, exact), then acc += d * s + m * xsum_b,
 * acc in a small array on the stack (updated once a block, read once at the end). */
#define Q4_KERNEL(MM, PP)                                                                      \
    static void q4_kernel_##MM##_##PP(const float *x, const float *xsum, long K,               \
                                      const uint8_t *qs, const float *scales,                  \
                                      const float *mins, long p0, const float *bias,           \
                                      float *y, long N) {                                      \
        enum { NV = PP * Q4_VPP };                                                             \
        long nb = K / Q4_BLOCK;                                                                \
        float accm[MM][NV * VF_LANES] __attribute__((aligned(64)));                            \
        for (int r = 0; r < MM; r++)                                                           \
            for (int j = 0; j < NV; j++) storev(accm[r] + j * VF_LANES, (vf){0});              \
        const uint8_t *q = qs + p0 * K * 8;                                                    \
        const float *sc = scales + p0 * nb * Q4_PANEL, *mn = mins + p0 * nb * Q4_PANEL;        \
        for (long b = 0; b < nb; b++) {                                                        \
            vf s[MM][NV];                                                                      \
            for (int r = 0; r < MM; r++)                                                       \
                for (int j = 0; j < NV; j++) s[r][j] = (vf){0};                                \
            for (int j = 0; j < PP; j++) {                                                     \
                const uint8_t *f = q + (j * K + (b + Q4_AHEAD) * Q4_BLOCK) * 8;                \
                for (int i = 0; i < Q4_BLOCK * 8; i += 64) __builtin_prefetch(f + i);          \
                __builtin_prefetch(sc + (j * nb + b + Q4_AHEAD) * Q4_PANEL);                   \
                __builtin_prefetch(mn + (j * nb + b + Q4_AHEAD) * Q4_PANEL);                   \
            }                                                                                  \
            for (long k = b * Q4_BLOCK; k < (b + 1) * Q4_BLOCK; k++) {                         \
                vf w[NV];                                                                      \
                for (int j = 0; j < PP; j++) q4_nibbles(q + (j * K + k) * 8, w + j * Q4_VPP);  \
                for (int r = 0; r < MM; r++) {                                                 \
                    float xv = x[r * K + k];                                                   \
                    for (int j = 0; j < NV; j++) s[r][j] += xv * w[j];                         \
                }                                                                              \
            }                                                                                  \
            for (int j = 0; j < PP; j++)                                                       \
                for (int v = 0; v < Q4_VPP; v++) {                                             \
                    vf d = loadv(sc + (j * nb + b) * Q4_PANEL + v * VF_LANES);                 \
                    vf m = loadv(mn + (j * nb + b) * Q4_PANEL + v * VF_LANES);                 \
                    for (int r = 0; r < MM; r++) {                                             \
                        float *a = accm[r] + (j * Q4_VPP + v) * VF_LANES;                      \
                        storev(a, loadv(a) + d * s[r][j * Q4_VPP + v] + m * xsum[r * nb + b]); \
                    }                                                                          \
                }                                                                              \
        }                                                                                      \
        for (int j = 0; j < PP; j++) {                                                         \
            long n0 = (p0 + j) * Q4_PANEL;                                                     \
            for (int v = 0; v < Q4_VPP; v++) {                                                 \
                long c0 = n0 + v * VF_LANES;                                                   \
                for (int r = 0; r < MM; r++) {                                                 \
                    vf out = loadv(accm[r] + (j * Q4_VPP + v) * VF_LANES);                     \
                    store_columns(y + r * N, out, bias, c0, N);                                \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

typedef void (*q4_kernel_t)(const float *, const float *, long, const uint8_t *, const float *,
                            const float *, long, const float *, float *, long);

#if VF_LANES == 16
/* 32 zmm registers: the block sums of up to 4 rows x 4 panels or 8 rows x 2 panels, a panel's
 * nibbles and weights, the broadcast x. At least 4 panels' sums for 1-2 rows: with fewer, the
 * sums' FMA chains (4 cycles each) set the pace, not the nibble expansion. */
#define Q4_MAXM 8
Q4_KERNEL(1, 4) Q4_KERNEL(2, 4) Q4_KERNEL(3, 4) Q4_KERNEL(4, 4)
Q4_KERNEL(5, 2) Q4_KERNEL(6, 2) Q4_KERNEL(7, 2) Q4_KERNEL(8, 2)
Q4_KERNEL(1, 1) Q4_KERNEL(2, 1) Q4_KERNEL(3, 1) Q4_KERNEL(4, 1)
Q4_KERNEL(5, 1) Q4_KERNEL(6, 1) Q4_KERNEL(7, 1) Q4_KERNEL(8, 1)
static const q4_kernel_t Q4_WIDE[Q4_MAXM + 1] = {
    0, q4_kernel_1_4, q4_kernel_2_4, q4_kernel_3_4, q4_kernel_4_4,
    q4_kernel_5_2, q4_kernel_6_2, q4_kernel_7_2, q4_kernel_8_2};
static const q4_kernel_t Q4_NARROW[Q4_MAXM + 1] = {
    0, q4_kernel_1_1, q4_kernel_2_1, q4_kernel_3_1, q4_kernel_4_1,
    q4_kernel_5_1, q4_kernel_6_1, q4_kernel_7_1, q4_kernel_8_1};
static const int Q4_WIDTH[Q4_MAXM + 1] = {0, 4, 4, 4, 4, 2, 2, 2, 2};
#else
/* 16 ymm registers, two per panel row: up to 6 rows' block sums against one panel (12
 * registers, the nibbles, the broadcast x and the mask beside them); 1-2 rows take 2 panels
 * (more independent FMA chains). Zen 3, one thread, ns per panel row (16 weights), L2-resident
 * 576 x 576 (one-off harness, 2026-11-30): 1 row: 1 panel 1.5-1.6, 2 panels 0.88-1.0, 3
 * panels 0.96, 4 panels 1.2; 2 rows: 1 panel 1.6, 2 panels 1.3; 3 rows: 1 panel 1.8, 2
 * panels 2.4 (spills). */
#define Q4_MAXM 6
Q4_KERNEL(1, 2) Q4_KERNEL(2, 2)
Q4_KERNEL(1, 1) Q4_KERNEL(2, 1) Q4_KERNEL(3, 1) Q4_KERNEL(4, 1) Q4_KERNEL(5, 1) Q4_KERNEL(6, 1)
static const q4_kernel_t Q4_WIDE[Q4_MAXM + 1] = {
    0, q4_kernel_1_2, q4_kernel_2_2, q4_kernel_3_1, q4_kernel_4_1, q4_kernel_5_1, q4_kernel_6_1};
static const q4_kernel_t Q4_NARROW[Q4_MAXM + 1] = {
    0, q4_kernel_1_1, q4_kernel_2_1, q4_kernel_3_1, q4_kernel_4_1, q4_kernel_5_1, q4_kernel_6_1};
static const int Q4_WIDTH[Q4_MAXM + 1] = {0, 2, 2, 1, 1, 1, 1};
#endif

#define Q4_XSUM_STACK 1024 /* block sums of x kept on the stack up to this many */

/* x [M, K] and y [M, N] contiguous; bias [N] or NULL; K a multiple of 32. */
void parrot_q4_linear(const float *x, long M, long K, const uint8_t *qs, const float *scales,
                      const float *mins, long N, const float *bias, float *y, int threads) {
    long num_panels = (N + Q4_PANEL - 1) / Q4_PANEL, nb = K / Q4_BLOCK;
    if (M <= 0 || num_panels <= 0) return;
    if (threads < 1) threads = 1;
    if (threads > num_panels) threads = (int)num_panels;
    /* x's sums over each block of 32 k's, per row (for the mins' term) */
    float small[Q4_XSUM_STACK];
    float *xsum = M * nb <= Q4_XSUM_STACK ? small : malloc(sizeof(float) * M * nb);
    for (long r = 0; r < M * nb; r++) {
        vf t = {0};
        for (int i = 0; i < Q4_BLOCK; i += VF_LANES) t += loadv(x + r * Q4_BLOCK + i);
        xsum[r] = sum_lanesv(t);
    }
    /* Rows in blocks of Q4_MAXM and the rest; a tile of panels as wide as the widest of the
     * blocks' tiles, every row block against it before the next tile, so the blocks after the
     * first find the tile's 4-bit weights in L1/L2. */
    long last = M % Q4_MAXM ? M % Q4_MAXM : Q4_MAXM, block = M < Q4_MAXM ? M : Q4_MAXM;
    long tile = Q4_WIDTH[block] > Q4_WIDTH[last] ? Q4_WIDTH[block] : Q4_WIDTH[last];
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long lo = num_panels * t / nt, hi = num_panels * (t + 1) / nt;
        for (long p = lo; p < hi; p += tile) {
            long end = p + tile < hi ? p + tile : hi;
            for (long m0 = 0; m0 < M; m0 += block) {
                long mm = M - m0 < block ? M - m0 : block, c = p;
                const float *xs = x + m0 * K, *ss = xsum + m0 * nb;
                float *ys = y + m0 * N;
                for (; c + Q4_WIDTH[mm] <= end; c += Q4_WIDTH[mm])
                    Q4_WIDE[mm](xs, ss, K, qs, scales, mins, c, bias, ys, N);
                for (; c < end; c++) Q4_NARROW[mm](xs, ss, K, qs, scales, mins, c, bias, ys, N);
            }
        }
    }
    if (xsum != small) free(xsum);
}

/* 1 if the Q4 panels dequantize (d * q + m) to exactly the float32 `panels` ([ceil(N / 16)][K]
 * [16], packed_linear.c's layout) in the N real columns, else 0: the engine's check at load that
 * a GGUF's 4-bit weights are the float32 weights it loaded, in one pass over both (the torch
 * way, unpacking and dequantizing whole matrices, took seconds per model). */
int parrot_q4_matches(const uint8_t *qs, const float *scales, const float *mins,
                      const float *panels, long K, long N, int threads) {
    long num_panels = (N + Q4_PANEL - 1) / Q4_PANEL, nb = K / Q4_BLOCK;
    int same = 1;
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) reduction(& : same) schedule(static)
    for (long p = 0; p < num_panels; p++) {
        const uint8_t *q = qs + p * K * 8;
        const float *w = panels + p * K * Q4_PANEL;
        const float *sc = scales + p * nb * Q4_PANEL, *mn = mins + p * nb * Q4_PANEL;
        int columns = N - p * Q4_PANEL < Q4_PANEL ? (int)(N - p * Q4_PANEL) : Q4_PANEL;
        for (long k = 0; k < K; k++)
            for (int c = 0; c < columns; c++) {
                int nibble = c < 8 ? q[k * 8 + c] & 15 : q[k * 8 + c - 8] >> 4;
                long b = (k / Q4_BLOCK) * Q4_PANEL + c;
                same &= sc[b] * (float)nibble + mn[b] == w[k * Q4_PANEL + c];
            }
    }
    return same;
}
