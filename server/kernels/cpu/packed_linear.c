/* y = x @ W (+ bias) for float32 on CPU, with W packed into column panels.
 *
 * W [K, N] is stored as panels [ceil(N / 16)][K][16]: each panel holds 16 output columns for
 * every k, so a thread streams its panels front to back. Rows of x are taken MAXM at a time and
 * kept in registers against up to 4 panels, so each weight vector loaded feeds MAXM x 4 FMAs;
 * at decode batch sizes that keeps the product bound by memory bandwidth, and at prefill sizes
 * it stays near the FMA peak. Threads split the panels evenly (OpenMP, torch's runtime).
 *
 * GCC vector extensions, compiled with -march=native: 512-bit where AVX-512 exists, otherwise
 * the compiler splits the vectors.
 */
#include <omp.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define PANEL 16
#define MAXM 6
#define L2_CHUNK (512L * 1024)

#define KERNEL(MM, PP)                                                                        \
    static void kernel_##MM##_##PP(const float *x, long K, const float *panels, long p0,      \
                                   const float *bias, float *y, long N) {                     \
        v16 acc[MM][PP];                                                                      \
        for (int m = 0; m < MM; m++)                                                          \
            for (int j = 0; j < PP; j++) acc[m][j] = (v16){0};                                \
        const float *base = panels + p0 * K * PANEL;                                          \
        for (long k = 0; k < K; k++) {                                                        \
            v16 w[PP];                                                                        \
            for (int j = 0; j < PP; j++) w[j] = *(const v16 *)(base + (j * K + k) * PANEL);   \
            for (int m = 0; m < MM; m++) {                                                    \
                float xv = x[m * K + k];                                                      \
                for (int j = 0; j < PP; j++) acc[m][j] += xv * w[j];                          \
            }                                                                                 \
        }                                                                                     \
        for (int j = 0; j < PP; j++) {                                                        \
            long n0 = (p0 + j) * PANEL;                                                       \
            v16 b = {0};                                                                      \
            if (bias && n0 + PANEL <= N) b = *(const v16 *)(bias + n0);                       \
            for (int m = 0; m < MM; m++) {                                                    \
                if (n0 + PANEL <= N) {                                                        \
                    *(v16 *)(y + m * N + n0) = acc[m][j] + b;                                 \
                } else {                                                                      \
                    for (long i = 0; n0 + i < N; i++)                                         \
                        y[m * N + n0 + i] = acc[m][j][i] + (bias ? bias[n0 + i] : 0.0f);      \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

KERNEL(1, 4) KERNEL(2, 4) KERNEL(3, 4) KERNEL(4, 4) KERNEL(5, 4) KERNEL(6, 4)
KERNEL(1, 1) KERNEL(2, 1) KERNEL(3, 1) KERNEL(4, 1) KERNEL(5, 1) KERNEL(6, 1)

typedef void (*kernel_t)(const float *, long, const float *, long, const float *, float *, long);
static const kernel_t WIDE[MAXM + 1] = {0, kernel_1_4, kernel_2_4, kernel_3_4,
                                        kernel_4_4, kernel_5_4, kernel_6_4};
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
            for (long m0 = 0; m0 < M; m0 += MAXM) {
                long mm = M - m0 < MAXM ? M - m0 : MAXM;
                const float *xs = x + m0 * K;
                float *ys = y + m0 * N;
                long p = c0;
                for (; p + 4 <= c1; p += 4) WIDE[mm](xs, K, panels, p, bias, ys, N);
                for (; p < c1; p++) NARROW[mm](xs, K, panels, p, bias, ys, N);
            }
        }
    }
}
