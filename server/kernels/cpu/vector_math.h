/* 16-lane float vectors (GCC vector extensions) and the lane-wise math the CPU kernels share.
 * Compiled with -march=native: one 512-bit register where AVX-512 exists, otherwise the
 * compiler splits the vectors. */
#ifndef PARROT_VECTOR_MATH_H
#define PARROT_VECTOR_MATH_H

#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64)));

static inline v16 load(const float *p) { return *(const v16u *)p; }

/* lanes of a where mask is set (all ones), else of b */
static inline v16 select_lanes(v16i mask, v16 a, v16 b) {
    return (v16)(((v16i)a & mask) | ((v16i)b & ~mask));
}

/* Lane-wise e^x for x <= 0 (lanes below -87 give 0): e^x = 2^n * e^r, n = round(x / ln 2),
 * |r| <= ln 2 / 2, e^r by its Taylor series to degree 7. */
static inline v16 exp_nonpositive(v16 x) {
    const v16 floor_arg = (v16){0} - 87.0f;
    v16i below = x < floor_arg;
    v16 xc = select_lanes(below, floor_arg, x);
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    v16 n = (xc * 1.44269504088896341f + round_magic) - round_magic;
    v16 r = xc - n * 0.693359375f - n * -2.12194440e-4f;
    v16 p = (v16){0} + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    v16 y = p * (v16)bits;
    return select_lanes(below, (v16){0}, y);
}

#endif
