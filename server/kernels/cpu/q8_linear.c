/* y = x @ W (+ bias) on CPU with W in 8-bit "Q8 panels" (GGUF Q8_0, Q6_K and the 5-bit types'
 * blocks, re-laid at load).
 *
 * Format. Output columns in panels of 16 (as packed_linear.c), N padded to a multiple of 16 with
 * zero columns (q = 0, d = 0); a scale per B = 32 inputs (Q8_0) or 16 (Q6_K); K a multiple of B.
 *   qs     int8    [ceil(N / 16)][K][16]       q of column 16p + c at input k: [p][k][c]
 *   scales float32 [ceil(N / 16)][K / B][16]   d of column 16p + c, k-block b:  [p][b][c]
 *   mins   float32, as scales, or NULL         m of column 16p + c, k-block b
 * W[k][n] = d * q (+ m), computed in float32 as one FMA: the affine types (Q5_1, Q5_K: q in
 * 0..31) have a min per block, and d * q being exact, fma(q, d, m) rounds once, as gguf-py's
 * d * q + m does. For d taken from float16 (Q8_0's scales) the product is
 * exact: d has at most 11 significant bits and q (|q| <= 128) at most 8, so d * q needs at most
 * 19 < 24, and a float16 d is never below float32's normal range; Q6_K's d (a float16 times an
 * int8 sub-scale) times q may round, once, as gguf-py's dequantize rounds it. The kernel's
 * weights are thus exactly `dequantize()`'s (q8_linear.py), and each column's sum runs over k
 * in order with one FMA a weight, as packed_linear.c does with those float32 weights: the two
 * give the same bits. Every tile is built for both B (Q8_KERNELS), chosen per call.
 *
 * Design: lanes over output columns. Per k, a tile loads each of its vectors' int8 q (VF_LANES
 * bytes), widens them to int32 (vpmovsxbd) and to float (vcvtdq2ps), multiplies by the block's d
 * (the 16 floats of a panel's block, read once per 32 k into a register, or used as a memory
 * operand from L1 where the tile needs the registers) and FMAs the weight vector into every row
 * of the tile with x[r][k] broadcast. Dequantizing costs one multiply a weight vector, shared by
 * the tile's rows. Accumulating x * q per block and scaling each block's sum by d would save it,
 * but needs a second accumulator per row and vector (half the rows per tile in AVX2's 16
 * registers) and gives other results than the float32 product with W; on the Zen 3 it ran the
 * single-row product ~30% faster with the weights in cache and ~15% from memory on one thread
 * (README). Decode is then bound by memory on two threads: a weight is 1 byte plus 1/8 of a byte
 * of scales, against 4 for float32, but the widening and converting keep a core busy for about
 * as long as the bytes take to arrive.
 *
 * Tiles are rows x consecutive vectors of VF_LANES columns (a tile may start or end inside a
 * panel where a panel holds two vectors, AVX2), so one row can take four vectors and six rows
 * two; rows come in blocks (Q8_MAXM, Q8_STEP). Threads split the panels evenly (OpenMP, torch's
 * runtime), panels in chunks of about Q8_L2_CHUNK bytes, every row block against one chunk
 * before the next. Each thread prefetches its panels Q8_PF k-rows ahead (a line per vector per
 * 4 k) and the scales one block ahead.
 *
 * Every name but parrot_q8_linear is static and q8_/Q8_-prefixed: this file is compiled into one
 * library with packed_linear.c and the other kernels.
 */
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "vector_math.h"

#define Q8_PANEL 16
#define Q8_L2_CHUNK (256L * 1024)
#define Q8_VPP (Q8_PANEL / VF_LANES) /* native vectors per panel row */
#ifndef Q8_PF
#define Q8_PF 64
#endif

/* VF_LANES int8 at p -> float: vpmovsxbd (from memory) and vcvtdq2ps. GCC 12 turns
 * __builtin_convertvector of an int8 vector into byte-by-byte inserts, hence the intrinsics;
 * the generic form is for the other width's build in the tests (PARROT_VF_LANES). */
#if VF_LANES == 16 && defined(__AVX512F__)
static inline vf q8_loadq(const int8_t *p) {
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#elif VF_LANES == 8 && defined(__AVX2__)
static inline vf q8_loadq(const int8_t *p) {
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#else
typedef int8_t q8_vq __attribute__((vector_size(VF_LANES), aligned(1)));
static inline vf q8_loadq(const int8_t *p) {
    return __builtin_convertvector(__builtin_convertvector(*(const q8_vq *)p, vi), vf);
}
#endif

/* Rows [0, MM) of x against the NV vectors v0 .. v0 + NV - 1 (vector v: columns
 * v * VF_LANES ..., in panel v / Q8_VPP). */
#define Q8_KERNEL(MM, NV, Q8_BLOCK, MIN)                                                      \
    static void q8_kernel_##MM##_##NV##_##Q8_BLOCK##_##MIN(                                   \
        const float *x, long K, const int8_t *qs, const float *scales, const float *mins,     \
        long v0, const float *bias, float *y, long N) {                                       \
        const int8_t *qp[NV];                                                                 \
        const float *sp[NV], *mp[NV];                                                         \
        for (int j = 0; j < NV; j++) {                                                        \
            long p = (v0 + j) / Q8_VPP, off = (v0 + j) % Q8_VPP * VF_LANES;                   \
            qp[j] = qs + p * K * Q8_PANEL + off;                                              \
            sp[j] = scales + p * (K / Q8_BLOCK) * Q8_PANEL + off;                             \
            mp[j] = MIN ? mins + p * (K / Q8_BLOCK) * Q8_PANEL + off : 0;                     \
        }                                                                                     \
        vf acc[MM][NV];                                                                       \
        for (int m = 0; m < MM; m++)                                                          \
            for (int j = 0; j < NV; j++) acc[m][j] = (vf){0};                                 \
        for (long k0 = 0; k0 < K; k0 += Q8_BLOCK) {                                           \
            if (Q8_PF)                                                                        \
                for (int j = 0; j < NV; j++)                                                  \
                    __builtin_prefetch(sp[j] + (Q8_PF / Q8_BLOCK + 1) * Q8_PANEL);            \
            for (long k4 = k0; k4 < k0 + Q8_BLOCK; k4 += 4) {                                 \
                if (Q8_PF)                                                                    \
                    for (int j = 0; j < NV; j++)                                              \
                        __builtin_prefetch(qp[j] + (k4 + Q8_PF) * Q8_PANEL);                  \
                for (long k = k4; k < k4 + 4; k++) {                                          \
                    vf w[NV];                                                                 \
                    for (int j = 0; j < NV; j++)                                              \
                        w[j] = MIN ? q8_loadq(qp[j] + k * Q8_PANEL) * loadv(sp[j]) + loadv(mp[j]) \
                                   : q8_loadq(qp[j] + k * Q8_PANEL) * loadv(sp[j]);           \
                    for (int m = 0; m < MM; m++) {                                            \
                        float xv = x[m * K + k];                                              \
                        for (int j = 0; j < NV; j++) acc[m][j] += xv * w[j];                  \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            for (int j = 0; j < NV; j++) {                                                    \
                sp[j] += Q8_PANEL;                                                            \
                if (MIN) mp[j] += Q8_PANEL;                                                   \
            }                                                                                 \
        }                                                                                     \
        for (int j = 0; j < NV; j++) {                                                        \
            long c0 = (v0 + j) * VF_LANES;                                                    \
            for (int m = 0; m < MM; m++) store_columns(y + m * N, acc[m][j], bias, c0, N);    \
        }                                                                                     \
    }

typedef void (*q8_kernel_t)(const float *, long, const int8_t *, const float *, const float *,
                            long, const float *, float *, long);

/* each tile for both block sizes, without and with mins */
#define Q8_KERNELS(MM, NV)                                                                    \
    Q8_KERNEL(MM, NV, 32, 0) Q8_KERNEL(MM, NV, 16, 0) Q8_KERNEL(MM, NV, 32, 1)                \
    Q8_KERNEL(MM, NV, 16, 1)

#if VF_LANES == 16
/* 32 registers: rows x vectors accumulators, the vectors' weights and a broadcast; rows in
 * blocks of 8 (not measured: no AVX-512 host here). */
#define Q8_MAXM 8
#define Q8_STEP 8
Q8_KERNELS(1, 4) Q8_KERNELS(2, 4) Q8_KERNELS(3, 4) Q8_KERNELS(4, 4) Q8_KERNELS(5, 4)
Q8_KERNELS(6, 3) Q8_KERNELS(7, 3) Q8_KERNELS(8, 3)
Q8_KERNELS(1, 1) Q8_KERNELS(2, 1) Q8_KERNELS(3, 1) Q8_KERNELS(4, 1) Q8_KERNELS(5, 1)
Q8_KERNELS(6, 1) Q8_KERNELS(7, 1) Q8_KERNELS(8, 1)
#define Q8_TABLES(B)                                                                          \
    static const q8_kernel_t Q8_WIDE_##B[Q8_MAXM + 1] = {                                     \
        0, q8_kernel_1_4_##B, q8_kernel_2_4_##B, q8_kernel_3_4_##B, q8_kernel_4_4_##B,        \
        q8_kernel_5_4_##B, q8_kernel_6_3_##B, q8_kernel_7_3_##B, q8_kernel_8_3_##B};          \
    static const q8_kernel_t Q8_NARROW_##B[Q8_MAXM + 1] = {                                   \
        0, q8_kernel_1_1_##B, q8_kernel_2_1_##B, q8_kernel_3_1_##B, q8_kernel_4_1_##B,        \
        q8_kernel_5_1_##B, q8_kernel_6_1_##B, q8_kernel_7_1_##B, q8_kernel_8_1_##B};
static const int Q8_WIDTH[Q8_MAXM + 1] = {0, 4, 4, 4, 4, 4, 3, 3, 3};
#else
/* 16 registers of 8 lanes: rows x vectors accumulators (up to 12), the weights and a
 * broadcast. Zen 3, one thread, the weights in cache, Gweights/s (x rows): 1 x 4 vectors 13-15,
 * 2 x 4 10.3 (21), 3 x 2 8 (24), 4 x 2 8.2 (33), 5 x 2 5.7 (29), 6 x 2 5.1 (31; 6 x 1 4.2),
 * 7 x 1 3.6 (25), 8 x 1 3.2-3.6 (26-29). So up to 6 rows are one block and more rows go 4 at a
 * time until at most 6 are left (7 = 4 + 3, 8 = 4 + 4, 16 = 4 x 4): from memory, 7, 8 and 16
 * rows ran 10-14% faster than in blocks of 8 (2026-11-30). */
#define Q8_MAXM 6
#define Q8_STEP 4
Q8_KERNELS(1, 4) Q8_KERNELS(2, 4) Q8_KERNELS(3, 2) Q8_KERNELS(4, 2) Q8_KERNELS(5, 2)
Q8_KERNELS(6, 2)
Q8_KERNELS(1, 1) Q8_KERNELS(2, 1) Q8_KERNELS(3, 1) Q8_KERNELS(4, 1) Q8_KERNELS(5, 1)
Q8_KERNELS(6, 1)
#define Q8_TABLES(B)                                                                          \
    static const q8_kernel_t Q8_WIDE_##B[Q8_MAXM + 1] = {                                     \
        0, q8_kernel_1_4_##B, q8_kernel_2_4_##B, q8_kernel_3_2_##B, q8_kernel_4_2_##B,        \
        q8_kernel_5_2_##B, q8_kernel_6_2_##B};                                                 \
    static const q8_kernel_t Q8_NARROW_##B[Q8_MAXM + 1] = {                                   \
        0, q8_kernel_1_1_##B, q8_kernel_2_1_##B, q8_kernel_3_1_##B, q8_kernel_4_1_##B,        \
        q8_kernel_5_1_##B, q8_kernel_6_1_##B};
static const int Q8_WIDTH[Q8_MAXM + 1] = {0, 4, 4, 2, 2, 2, 2};
#endif
Q8_TABLES(32_0) Q8_TABLES(16_0) Q8_TABLES(32_1) Q8_TABLES(16_1)

/* x [M, K] and y [M, N] contiguous; bias [N] or NULL; `block` k's share a scale (and a min, with
 * mins not NULL): 32 (Q8_0) or 16 (Q6_K's blocks); K a multiple of it. */
void parrot_q8_linear(const float *x, long M, long K, const int8_t *qs, const float *scales,
                      const float *mins, long block, long N, const float *bias, float *y,
                      int threads) {
    long num_panels = (N + Q8_PANEL - 1) / Q8_PANEL;
    if (M <= 0 || N <= 0) return;
    const q8_kernel_t *wide = block == 16 ? (mins ? Q8_WIDE_16_1 : Q8_WIDE_16_0)
                                          : (mins ? Q8_WIDE_32_1 : Q8_WIDE_32_0);
    const q8_kernel_t *narrow = block == 16 ? (mins ? Q8_NARROW_16_1 : Q8_NARROW_16_0)
                                            : (mins ? Q8_NARROW_32_1 : Q8_NARROW_32_0);
    if (threads < 1) threads = 1;
    if (threads > num_panels) threads = (int)num_panels;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long lo = num_panels * t / nt, hi = num_panels * (t + 1) / nt;
        long chunk = K > 0 ? Q8_L2_CHUNK / (K * Q8_PANEL) : hi - lo;
        chunk = chunk < 4 ? 4 : chunk - chunk % 4;
        for (long c0 = lo; c0 < hi; c0 += chunk) {
            long c1 = c0 + chunk < hi ? c0 + chunk : hi;
            /* in vectors; the last panel's padded vectors are skipped when wholly past N */
            long v1 = c1 * Q8_VPP, vn = (N + VF_LANES - 1) / VF_LANES;
            if (v1 > vn) v1 = vn;
            for (long m0 = 0, mm; m0 < M; m0 += mm) {
                mm = M - m0 <= Q8_MAXM ? M - m0 : Q8_STEP;
                const float *xs = x + m0 * K;
                float *ys = y + m0 * N;
                long v = c0 * Q8_VPP;
                int width = Q8_WIDTH[mm];
                for (; v + width <= v1; v += width)
                    wide[mm](xs, K, qs, scales, mins, v, bias, ys, N);
                for (; v < v1; v++) narrow[mm](xs, K, qs, scales, mins, v, bias, ys, N);
            }
        }
    }
}

/* 1 if the Q8 panels (a scale, and a min unless mins is NULL, per `block` inputs) dequantize
 * (d * q, or fma(q, d, m)) to exactly the float32 `panels` ([ceil(N / 16)][K][16],
 * packed_linear.c's layout) in the N real columns, else 0: the engine's check at load that a
 * GGUF's 8-, 6- or 5-bit weights are the float32 weights it loaded, in one pass over both. */
int parrot_q8_matches(const int8_t *qs, const float *scales, const float *mins, long block,
                      const float *panels, long K, long N, int threads) {
    long num_panels = (N + Q8_PANEL - 1) / Q8_PANEL, nb = K / block;
    int same = 1;
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) reduction(& : same) schedule(static)
    for (long p = 0; p < num_panels; p++) {
        const int8_t *q = qs + p * K * Q8_PANEL;
        const float *w = panels + p * K * Q8_PANEL, *sc = scales + p * nb * Q8_PANEL;
        const float *mn = mins ? mins + p * nb * Q8_PANEL : NULL;
        int columns = N - p * Q8_PANEL < Q8_PANEL ? (int)(N - p * Q8_PANEL) : Q8_PANEL;
        for (long k = 0; k < K; k++)
            for (int c = 0; c < columns; c++) {
                long b = (k / block) * Q8_PANEL + c;
                float d = sc[b], qf = (float)q[k * Q8_PANEL + c];
                same &= (mn ? fmaf(qf, d, mn[b]) : d * qf) == w[k * Q8_PANEL + c];
            }
    }
    return same;
}
