/* Float vectors (GCC vector extensions) and the lane-wise math the CPU kernels share.
 * Compiled with -march=native.
 *
 * `vf` is the machine's own vector: 16 lanes where AVX-512 exists, 8 (AVX2) otherwise. Write
 * kernels over `vf` and VF_LANES. A vector type wider than the machine's registers has no
 * register mode in GCC: its values live on the stack and every operation goes through memory
 * in 128-bit pieces (on an AVX2 Zen 3 the 16-lane kernels ran 5-25x slower than with 8-lane
 * vectors). */
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

/* A linear kernel's output for one row: y[c0 .. c0 + VF_LANES), cut at column N, = out
 * (+ bias[c0 ..] unless bias is NULL). */
static inline void store_columns(float *y, vf out, const float *bias, long c0, long N) {
    if (c0 + VF_LANES <= N) {
        storev(y + c0, bias ? out + loadv(bias + c0) : out);
    } else {
        for (long i = 0; c0 + i < N && i < VF_LANES; i++)
            y[c0 + i] = bias ? out[i] + bias[c0 + i] : out[i];
    }
}

/* lanes of a where mask is set (all ones), else of b */
static inline vf selectv(vi mask, vf a, vf b) {
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* Lane-wise e^x for x <= 0 (lanes below -87 give 0): e^x = 2^n * e^r, n = round(x / ln 2),
 * |r| <= ln 2 / 2, e^r by its Taylor series to degree 7 (relative error < 1e-7). */
static inline vf expv_nonpositive(vf x) {
    const vf floor_arg = (vf){0} - 87.0f;
    vi below = x < floor_arg;
    vf xc = selectv(below, floor_arg, x);
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    vf n = (xc * 1.44269504088896341f + round_magic) - round_magic;
    vf r = xc - n * 0.693359375f - n * -2.12194440e-4f;
    vf p = (vf){0} + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf y = p * (vf)bits;
    return selectv(below, (vf){0}, y);
}

/* e^x for a softmax's x = score - running max <= 0, in about two thirds of expv_nonpositive's
 * operations (the attention kernels' weights): x is clamped to -87 (masked -inf lanes, and
 * scores 87 below the max, weigh e^-87 ~ 1.6e-38 rather than 0: nothing beside the max's weight
 * 1, and still a normal float), e^r by a degree-5 polynomial fitted for relative error (2e-7 in
 * float32) on |r| <= ln 2 / 2, and 2^n from the rounding constant's own bits: t = 1.5 * 2^23 + n
 * holds n in its low mantissa bits, and shifting them into the exponent drops the constant's.
 * (Named apart from the `exp_scores` that older kernel files define for themselves, so that a
 * kernel A/B can build them beside this header.) */
typedef uint32_t vu32 __attribute__((vector_size(VF_LANES * 4)));

static inline vf expv_scores(vf x) {
    const vf floor_arg = (vf){0} - 87.0f;
    x = selectv(x > floor_arg, x, floor_arg);
    vf t = x * 1.44269504088896341f + 12582912.0f;
    vf n = t - 12582912.0f;
    vf r = x - n * 0.693359375f - n * -2.12194440e-4f;
    vf p = (vf){0} + 8.2976548e-3f;
    p = p * r + 4.1915383e-2f;
    p = p * r + 1.6667575e-1f;
    p = p * r + 4.9998894e-1f;
    p = p * r + 9.9999970e-1f;
    p = p * r + 1.0000001f;
    vu32 bits = ((vu32)t << 23) + (127u << 23);
    return p * (vf)bits;
}

/* the largest lane / the sum of the lanes, by halving */
#if VF_LANES == 16
static inline float max_lanesv(vf x) {
    const vi hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
    const vi hi4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
    const vi hi2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
    const vi hi1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
    vf y;
    y = __builtin_shuffle(x, hi8); x = selectv(x > y, x, y);
    y = __builtin_shuffle(x, hi4); x = selectv(x > y, x, y);
    y = __builtin_shuffle(x, hi2); x = selectv(x > y, x, y);
    y = __builtin_shuffle(x, hi1); x = selectv(x > y, x, y);
    return x[0];
}

static inline float sum_lanesv(vf x) {
    const vi hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
    const vi hi4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
    const vi hi2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
    const vi hi1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
    x += __builtin_shuffle(x, hi8);
    x += __builtin_shuffle(x, hi4);
    x += __builtin_shuffle(x, hi2);
    x += __builtin_shuffle(x, hi1);
    return x[0];
}
#else
static inline float max_lanesv(vf x) {
    const vi hi4 = {4, 5, 6, 7, 0, 1, 2, 3};
    const vi hi2 = {2, 3, 0, 1, 6, 7, 4, 5};
    const vi hi1 = {1, 0, 3, 2, 5, 4, 7, 6};
    vf y;
    y = __builtin_shuffle(x, hi4); x = selectv(x > y, x, y);
    y = __builtin_shuffle(x, hi2); x = selectv(x > y, x, y);
    y = __builtin_shuffle(x, hi1); x = selectv(x > y, x, y);
    return x[0];
}

static inline float sum_lanesv(vf x) {
    const vi hi4 = {4, 5, 6, 7, 0, 1, 2, 3};
    const vi hi2 = {2, 3, 0, 1, 6, 7, 4, 5};
    const vi hi1 = {1, 0, 3, 2, 5, 4, 7, 6};
    x += __builtin_shuffle(x, hi4);
    x += __builtin_shuffle(x, hi2);
    x += __builtin_shuffle(x, hi1);
    return x[0];
}
#endif

#endif
