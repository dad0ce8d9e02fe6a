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
 * kernel may contract it or not, and q4_linear.dequantize (torch) gives the same weights.
 *
 * Lanes run over output columns. Per k the panel's 8 bytes are expanded to 16 nibbles in column
 * order (low nibbles: columns 0-7, high: 8-15), converted to float and dequantized in registers
 * with the block's d and m (loaded once per 32 k's); each weight vector then feeds one FMA per
 * row of a tile of rows of x. A decode step (M = 1-8 rows) streams ~0.75 bytes per weight
 * (4-bit q plus the block's float d and m) instead of float32's 4. Threads split the panels
 * (OpenMP, torch's runtime); every column is summed in the same order whatever the thread
 * count.
 *
 * GCC vector extensions over vector_math.h's `vf`, compiled with -march=native: 16 lanes (one
 * vector a panel row) with AVX-512, 8 (two) with AVX2, tiles sized to the register file.
 * Only parrot_q4_linear is public: the file is compiled into one library with the others.
 */
#include <immintrin.h>
#include <omp.h>
#include <string.h>

#include "vector_math.h"

#define Q4_PANEL 16
#define Q4_BLOCK 32
#define Q4_VPP (Q4_PANEL / VF_LANES) /* native vectors per panel row */

/* The weights of one panel row (8 bytes of qs) as Q4_VPP vectors, dequantized with the
 * block's d and m (Q4_VPP vectors each). GCC scalarizes a vector conversion from bytes, so the
 * native widths widen the bytes with intrinsics (vpmovzxbd). */
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

static inline void q4_weights(const uint8_t *p, const vf *d, const vf *m, vf *w) {
    vi v = q4_widen(p);
    w[0] = __builtin_convertvector(v & 15, vf) * d[0] + m[0];
    w[1] = __builtin_convertvector(v >> 4, vf) * d[1] + m[1];
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

static inline void q4_weights(const uint8_t *p, const vf *d, const vf *m, vf *w) {
    const vi shift = {0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4};
    w[0] = __builtin_convertvector((q4_widen(p) >> shift) & 15, vf) * d[0] + m[0];
}
#else
#error "q4_linear.c: VF_LANES must be 8 or 16"
#endif

/* MM rows of x against PP panels from panel p0; x and y point at the tile's first row. */
#define Q4_KERNEL(MM, PP)                                                                     \
    static void q4_kernel_##MM##_##PP(const float *x, long K, const uint8_t *qs,             \
                                      const float *scales, const float *mins, long p0,       \
                                      const float *bias, float *y, long N) {                 \
        enum { NV = PP * Q4_VPP };                                                            \
        long nb = K / Q4_BLOCK;                                                               \
        vf acc[MM][NV];                                                                       \
        for (int r = 0; r < MM; r++)                                                          \
            for (int j = 0; j < NV; j++) acc[r][j] = (vf){0};                                 \
        const uint8_t *q = qs + p0 * K * 8;                                                   \
        const float *sc = scales + p0 * nb * Q4_PANEL, *mn = mins + p0 * nb * Q4_PANEL;       \
        for (long b = 0; b < nb; b++) {                                                       \
            vf d[NV], m[NV];                                                                  \
            for (int j = 0; j < PP; j++)                                                      \
                for (int v = 0; v < Q4_VPP; v++) {                                            \
                    d[j * Q4_VPP + v] = loadv(sc + (j * nb + b) * Q4_PANEL + v * VF_LANES);   \
                    m[j * Q4_VPP + v] = loadv(mn + (j * nb + b) * Q4_PANEL + v * VF_LANES);   \
                }                                                                             \
            for (long k = b * Q4_BLOCK; k < (b + 1) * Q4_BLOCK; k++) {                        \
                vf w[NV];                                                                     \
                for (int j = 0; j < PP; j++)                                                  \
                    q4_weights(q + (j * K + k) * 8, d + j * Q4_VPP, m + j * Q4_VPP,           \
                               w + j * Q4_VPP);                                               \
                for (int r = 0; r < MM; r++) {                                                \
                    float xv = x[r * K + k];                                                  \
                    for (int j = 0; j < NV; j++) acc[r][j] += xv * w[j];                      \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (int j = 0; j < PP; j++) {                                                        \
            long n0 = (p0 + j) * Q4_PANEL;                                                    \
            for (int v = 0; v < Q4_VPP; v++) {                                                \
                long c0 = n0 + v * VF_LANES;                                                  \
                vf bv = {0};                                                                  \
                if (bias && c0 + VF_LANES <= N) bv = loadv(bias + c0);                        \
                for (int r = 0; r < MM; r++) {                                                \
                    vf out = acc[r][j * Q4_VPP + v];                                          \
                    if (c0 + VF_LANES <= N) {                                                 \
                        storev(y + r * N + c0, out + bv);                                     \
                    } else {                                                                  \
                        for (long i = 0; c0 + i < N && i < VF_LANES; i++)                     \
                            y[r * N + c0 + i] = out[i] + (bias ? bias[c0 + i] : 0.0f);        \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

typedef void (*q4_kernel_t)(const float *, long, const uint8_t *, const float *, const float *,
                            long, const float *, float *, long);

#if VF_LANES == 16
/* 32 zmm registers: up to 8 rows x 2 panels of accumulators, the panels' d, m and weights. */
#define Q4_MAXM 8
Q4_KERNEL(1, 2) Q4_KERNEL(2, 2) Q4_KERNEL(3, 2) Q4_KERNEL(4, 2)
Q4_KERNEL(5, 2) Q4_KERNEL(6, 2) Q4_KERNEL(7, 2) Q4_KERNEL(8, 2)
Q4_KERNEL(1, 1) Q4_KERNEL(2, 1) Q4_KERNEL(3, 1) Q4_KERNEL(4, 1)
Q4_KERNEL(5, 1) Q4_KERNEL(6, 1) Q4_KERNEL(7, 1) Q4_KERNEL(8, 1)
static const q4_kernel_t Q4_WIDE[Q4_MAXM + 1] = {
    0, q4_kernel_1_2, q4_kernel_2_2, q4_kernel_3_2, q4_kernel_4_2,
    q4_kernel_5_2, q4_kernel_6_2, q4_kernel_7_2, q4_kernel_8_2};
static const q4_kernel_t Q4_NARROW[Q4_MAXM + 1] = {
    0, q4_kernel_1_1, q4_kernel_2_1, q4_kernel_3_1, q4_kernel_4_1,
    q4_kernel_5_1, q4_kernel_6_1, q4_kernel_7_1, q4_kernel_8_1};
static const int Q4_WIDTH[Q4_MAXM + 1] = {0, 2, 2, 2, 2, 2, 2, 2, 2};
#else
/* 16 ymm registers, two per panel row: rows x 2 accumulators, the panel's 2 d and 2 m, the 2
 * weights and the nibbles. */
#define Q4_MAXM 4
Q4_KERNEL(1, 1) Q4_KERNEL(2, 1) Q4_KERNEL(3, 1) Q4_KERNEL(4, 1)
static const q4_kernel_t Q4_WIDE[Q4_MAXM + 1] = {
    0, q4_kernel_1_1, q4_kernel_2_1, q4_kernel_3_1, q4_kernel_4_1};
static const q4_kernel_t Q4_NARROW[Q4_MAXM + 1] = {
    0, q4_kernel_1_1, q4_kernel_2_1, q4_kernel_3_1, q4_kernel_4_1};
static const int Q4_WIDTH[Q4_MAXM + 1] = {0, 1, 1, 1, 1};
#endif

/* Rows in blocks of at most Q4_MAXM, as even as they come (7 rows: 4 + 3, not 4 + 3 ... ). */
static long q4_row_block(long M) {
    long blocks = (M + Q4_MAXM - 1) / Q4_MAXM;
    return (M + blocks - 1) / blocks;
}

/* x [M, K] and y [M, N] contiguous; bias [N] or NULL; K a multiple of 32. */
void parrot_q4_linear(const float *x, long M, long K, const uint8_t *qs, const float *scales,
                      const float *mins, long N, const float *bias, float *y, int threads) {
    long num_panels = (N + Q4_PANEL - 1) / Q4_PANEL;
    if (M <= 0 || num_panels <= 0) return;
    if (threads < 1) threads = 1;
    if (threads > num_panels) threads = (int)num_panels;
    long block = q4_row_block(M);
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long lo = num_panels * t / nt, hi = num_panels * (t + 1) / nt;
        /* Every row block against a panel tile before the next tile: the tile's 4-bit weights
         * (K * 8 bytes a panel) stay in L1/L2 for the blocks after the first. */
        for (long p = lo; p < hi;) {
            int width = p + Q4_WIDTH[block] <= hi ? Q4_WIDTH[block] : 1;
            for (long m0 = 0; m0 < M; m0 += block) {
                long mm = M - m0 < block ? M - m0 : block;
                (width > 1 ? Q4_WIDE : Q4_NARROW)[mm](x + m0 * K, K, qs, scales, mins, p, bias,
                                                      y + m0 * N, N);
            }
            p += width;
        }
    }
}
