/* Float vectors (GCC vector extensions) and the lane-wise math the CPU kernels share.
 * Compiled with -march=native.
 *
 * `vf` is the machine's own vector: 16 lanes where AVX-512 exists, 8 (AVX2) otherwise. Write
 * kernels over `vf` and VF_LANES. A vector type wider than the machine's registers has no
 * register mode in GCC: its values live on the stack and every operation goes through memory
 * in 128-bit pieces (on an AVX2 Zen 3 the 16-lane kernels ran 5-25x slower than with 8-lane
 * vectors). `v16` (16 lanes everywhere) is for kernels not yet written over `vf`. */
#ifndef PARROT_VECTOR_MATH_H
#define PARROT_VECTOR_MATH_H

#include <stdint.h>

#if defined(PARROT_VF_LANES) /* tests: the other width's tiles, on any x86 CPU */
#define VF_LANES PARROT_VF_LANES
#elif defined(__AVX512F__)
#define VF_LANES 16
#else
#define VF_LANES 8
#endif

typedef float vf __attribute__((vector_size(VF_LANES * 4)));
typedef float vfu __attribute__((vector_size(VF_LANES * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VF_LANES * 4)));

static inline vf loadv(const float *p) { return *(const vfu *)p; }
static inline void storev(float *p, vf x) { *(vfu *)p = x; }

/* lanes of a where mask is set (all ones), else of b */
static inline vf selectv(vi mask, vf a, vf b) {
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* Lane-wise e^x for x <= 0 (lanes below -87 give 0): e^x = 2^n * e^r, n = round(x / ln 2),
 * |r| <= ln 2 / 2, e^r by its Taylor series to degree 7 (relative error < 1e-7). */
#define PARROT_EXP_NONPOSITIVE(NAME, V, VI, SELECT)                                           \
    static inline V NAME(V x) {                                                               \
        const V floor_arg = (V){0} - 87.0f;                                                   \
        VI below = x < floor_arg;                                                             \
        V xc = SELECT(below, floor_arg, x);                                                   \
        const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds */            \
        V n = (xc * 1.44269504088896341f + round_magic) - round_magic;                        \
        V r = xc - n * 0.693359375f - n * -2.12194440e-4f;                                    \
        V p = (V){0} + 1.0f / 5040.0f;                                                        \
        p = p * r + 1.0f / 720.0f;                                                            \
        p = p * r + 1.0f / 120.0f;                                                            \
        p = p * r + 1.0f / 24.0f;                                                             \
        p = p * r + 1.0f / 6.0f;                                                              \
        p = p * r + 0.5f;                                                                     \
        p = p * r + 1.0f;                                                                     \
        p = p * r + 1.0f;                                                                     \
        VI bits = (__builtin_convertvector(n, VI) + 127) << 23;                               \
        V y = p * (V)bits;                                                                    \
        return SELECT(below, (V){0}, y);                                                      \
    }

PARROT_EXP_NONPOSITIVE(expv_nonpositive, vf, vi, selectv)

/* the largest and the sum of a vector's lanes */
static inline float max_lanesv(vf x) {
    float m = x[0];
    for (int i = 1; i < VF_LANES; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static inline float sum_lanesv(vf x) {
    float s = 0.0f;
    for (int i = 0; i < VF_LANES; i++) s += x[i];
    return s;
}

/* 16-lane vectors, for the kernels not yet written over vf */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64)));

static inline v16 load(const float *p) { return *(const v16u *)p; }

static inline v16 select_lanes(v16i mask, v16 a, v16 b) {
    return (v16)(((v16i)a & mask) | ((v16i)b & ~mask));
}

PARROT_EXP_NONPOSITIVE(exp_nonpositive, v16, v16i, select_lanes)

#endif
