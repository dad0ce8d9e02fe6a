/* y = x @ W (+ bias) for float32 on CPU, with W packed into column panels.
 *
 * W [K, N] is stored as panels [ceil(N / 16)][K][16]: each panel holds 16 output columns for
 * every k, so a thread streams its panels front to back. Rows of x are taken a few at a time and
 * kept in registers against a few panels (AVX-512: 6 rows x 4 panels; AVX2: see WIDE below), so
 * each weight vector loaded feeds several FMAs;
 * at decode batch sizes that keeps the product bound by memory bandwidth, and at prefill sizes
 * it stays near the FMA peak. Threads split the panels evenly (OpenMP, torch's runtime).
 *
 * GCC vector extensions, compiled with -march=native: 16-lane vectors where AVX-512 exists,
 * 8-lane (AVX2) otherwise, with tiles sized to the register file.
 */
#include <omp.h>

#include "vector_math.h"

#define PANEL 16
#define MAXM 6
#define L2_CHUNK (512L * 1024)

#define VPP (PANEL / VF_LANES) /* native vectors per panel row */

#define KERNEL(MM, PP)                                                                        \
    static void kernel_##MM##_##PP(const float *x, long K, const float *panels, long p0,      \
                                   const float *bias, float *y, long N) {                     \
        vf acc[MM][PP * VPP];                                                                 \
        for (int m = 0; m < MM; m++)                                                          \
            for (int j = 0; j < PP * VPP; j++) acc[m][j] = (vf){0};                           \
        const float *base = panels + p0 * K * PANEL;                                          \
        for (long k = 0; k < K; k++) {                                                        \
            vf w[PP * VPP];                                                                   \
            for (int j = 0; j < PP; j++)                                                      \
                for (int v = 0; v < VPP; v++)                                                 \
                    w[j * VPP + v] = loadv(base + (j * K + k) * PANEL + v * VF_LANES);           \
            for (int m = 0; m < MM; m++) {                                                    \
                float xv = x[m * K + k];                                                      \
                for (int j = 0; j < PP * VPP; j++) acc[m][j] += xv * w[j];                    \
            }                                                                                 \
        }                                                                                     \
        for (int j = 0; j < PP; j++) {                                                        \
            long n0 = (p0 + j) * PANEL;                                                       \
            for (int v = 0; v < VPP; v++) {                                                   \
                long c0 = n0 + v * VF_LANES;                                                     \
                for (int m = 0; m < MM; m++)                                                  \
                    store_columns(y + m * N, acc[m][j * VPP + v], bias, c0, N);               \
            }                                                                                 \
        }                                                                                     \
    }

KERNEL(1, 4) KERNEL(2, 4) KERNEL(3, 4) KERNEL(4, 4) KERNEL(5, 4) KERNEL(6, 4)
KERNEL(1, 2) KERNEL(2, 2) KERNEL(3, 2)
KERNEL(1, 1) KERNEL(2, 1) KERNEL(3, 1) KERNEL(4, 1) KERNEL(5, 1) KERNEL(6, 1)

typedef void (*kernel_t)(const float *, long, const float *, long, const float *, float *, long);
#if VF_LANES == 16
/* 32 registers: up to 6 rows x 4 panels of accumulators and the 4 weight vectors. */
static const kernel_t WIDE[MAXM + 1] = {0, kernel_1_4, kernel_2_4, kernel_3_4,
                                        kernel_4_4, kernel_5_4, kernel_6_4};
static const int WIDTH[MAXM + 1] = {0, 4, 4, 4, 4, 4, 4};
#define ROW_BLOCK(M) MAXM
#else
/* 16 registers of 8 lanes, two per panel row: rows x panels x 2 accumulators stay within 14
 * (the weights are FMA memory operands), else the tile spills. */
static const kernel_t WIDE[MAXM + 1] = {0, kernel_1_4, kernel_2_2, kernel_3_2,
                                        kernel_4_1, kernel_5_1, kernel_6_1};
static const int WIDTH[MAXM + 1] = {0, 4, 2, 2, 1, 1, 1};
/* Blocks of 3 rows against 2 panels read the weights at up to 8 rows in fewer passes' time
 * (4 rows: 23.5 against 30.6 ms for SmolLM2's layers); 6 x 1 reaches more FMA throughput
 * past that (256 rows: 558 against 610 ms). Zen 3, 2 threads, 2026-11-29. */
#define ROW_BLOCK(M) ((M) > 8 ? MAXM : 3)
#endif
static const kernel_t NARROW[MAXM + 1] = {0, kernel_1_1, kernel_2_1, kernel_3_1,
                                          kernel_4_1, kernel_5_1, kernel_6_1};

/* x [M, K] and y [M, N] contiguous; bias [N] or NULL. */
void parrot_packed_linear(const float *x, long M, long K, const float *panels, long N,
                          const float *bias, float *y, int threads) {
    long num_panels = (N + PANEL - 1) / PANEL;
    if (threads < 1) threads = 1;
    if (threads > num_panels) threads = (int)num_panels;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long lo = num_panels * t / nt, hi = num_panels * (t + 1) / nt;
        /* Panels in chunks of about L2_CHUNK bytes, every row block against one chunk before
         * the next: with many rows (prefill) the chunk stays in L2 instead of being re-read. */
        long chunk = L2_CHUNK / (K * PANEL * (long)sizeof(float));
        chunk = chunk < 4 ? 4 : chunk - chunk % 4;
        for (long c0 = lo; c0 < hi; c0 += chunk) {
            long c1 = c0 + chunk < hi ? c0 + chunk : hi;
            long block = ROW_BLOCK(M);
            for (long m0 = 0; m0 < M; m0 += block) {
                long mm = M - m0 < block ? M - m0 : block;
                const float *xs = x + m0 * K;
                float *ys = y + m0 * N;
                long p = c0;
                int width = WIDTH[mm];
                for (; p + width <= c1; p += width) WIDE[mm](xs, K, panels, p, bias, ys, N);
                for (; p < c1; p++) NARROW[mm](xs, K, panels, p, bias, ys, N);
            }
        }
    }
}
