/* Causal attention for chunks of query rows over a paged KV cache, float32 on CPU.
 *
 * Sequence s owns query rows [q_start[s], q_start[s + 1]): the last n_s of its tokens[s]
 * positions, whose K/V are already in the cache [num_blocks, block_size, Hkv, D] with the rest
 * of the sequence. Row i attends positions 0 .. tokens[s] - n_s + i. Keys are read in place.
 *
 * The work is done transposed: a task takes 32 query vectors (position x query head pairs that
 * share one KV head) as Q^T [D][32], so every product broadcasts one key or value element
 * against 32 queries held in two vectors, and the online softmax (running max, sum, rescale)
 * runs down the keys with no horizontal reductions. The output is kept as O^T [D][32] and
 * transposed once at the end. Tasks of (sequence, KV head, 32 query vectors) are spread over
 * the threads, the longest first.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define QV 32      /* query vectors per task: two 16-lane vectors */
#define KTILE 32   /* keys per softmax tile */
#define KBLOCK 8   /* keys per register block of the score product */
#define MAX_DIM 128

typedef struct {
    long seq, kv, first; /* query vectors first .. first + QV of (seq, kv), ordered (row, g) */
} task_t;

typedef struct {
    const float *k_cache, *v_cache;
    long Hq, Hkv, D, G, block_size;
    float scale;
} layout_t;

static void attend_task(const layout_t *a, const float *q, const int64_t *blocks, long row0,
                        long num_rows, long first_pos, long first, long kv, float *out);

/* q, out [T, Hq, D] (contiguous); q_start [S + 1]; tokens [S]; sequence s's blocks are
 * blocks[offsets[s] .. offsets[s + 1]). Returns 0, or -1 for bad sizes or no memory. */
int parrot_paged_prefill(const float *q, long S, const int64_t *q_start, const int64_t *tokens,
                         long Hq, long Hkv, long D, const float *k_cache, const float *v_cache,
                         long block_size, const int64_t *blocks, const int64_t *offsets,
                         float scale, float *out, int threads) {
    if (D % 16 || D > MAX_DIM || Hq % Hkv || Hkv < 1) return -1;
    const long G = Hq / Hkv;
    long num_tasks = 0;
    for (long s = 0; s < S; s++)
        num_tasks += Hkv * (((q_start[s + 1] - q_start[s]) * G + QV - 1) / QV);
    task_t *tasks = malloc(sizeof(task_t) * (num_tasks + 1));
    if (!tasks) return -1;
    /* longest first: within a sequence later query vectors see more keys */
    long n = 0;
    for (long s = 0; s < S; s++) {
        long vectors = (q_start[s + 1] - q_start[s]) * G;
        for (long first = (vectors - 1) / QV * QV; first >= 0; first -= QV)
            for (long kv = 0; kv < Hkv; kv++) tasks[n++] = (task_t){s, kv, first};
    }
    layout_t a = {k_cache, v_cache, Hq, Hkv, D, G, block_size, scale};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long t = 0; t < num_tasks; t++) {
        const task_t *task = tasks + t;
        long s = task->seq, rows = q_start[s + 1] - q_start[s];
        attend_task(&a, q, blocks + offsets[s], q_start[s], rows, tokens[s] - rows, task->first,
                    task->kv, out);
    }
    free(tasks);
    return 0;
}

/* Query vectors [first, first + QV) of KV head kv for the rows [row0, row0 + num_rows) whose
 * first sits at position first_pos; vector v is row v / G, query head kv * G + v % G. */
static void attend_task(const layout_t *a, const float *q, const int64_t *blocks, long row0,
                        long num_rows, long first_pos, long first, long kv, float *out) {
    const long D = a->D, G = a->G, Hq = a->Hq, stride = a->Hkv * D;
    const long count = num_rows * G - first < QV ? num_rows * G - first : QV;
    float qt[MAX_DIM * QV] __attribute__((aligned(64)));  /* Q^T [D][QV], pre-scaled */
    float ot[MAX_DIM * QV] __attribute__((aligned(64)));  /* O^T [D][QV], unnormalised */
    float st[KTILE * QV] __attribute__((aligned(64)));    /* S^T, then P^T [KTILE][QV] */
    int32_t pos[QV] __attribute__((aligned(64)));
    for (long v = 0; v < QV; v++) {
        long vv = first + (v < count ? v : count - 1); /* padding lanes repeat the last query */
        const float *src = q + ((row0 + vv / G) * Hq + kv * G + vv % G) * D;
        pos[v] = (int32_t)(first_pos + vv / G);
        for (long d = 0; d < D; d++) qt[d * QV + v] = v < count ? src[d] * a->scale : 0.0f;
    }
    memset(ot, 0, sizeof(float) * D * QV);
    const v16i pos0 = *(const v16i *)pos, pos1 = *(const v16i *)(pos + 16);
    const long last_key = pos[QV - 1] > pos[0] ? pos[QV - 1] : pos[0]; /* inclusive */
    const long min_pos = pos[0];
    v16 m0 = (v16){0} - INFINITY, m1 = m0, l0 = {0}, l1 = {0};
    const float *keys[KTILE], *values[KTILE];
    for (long t0 = 0; t0 <= last_key; t0 += KTILE) {
        long nk = last_key + 1 - t0 < KTILE ? last_key + 1 - t0 : KTILE;
        for (long j = 0; j < nk; j++) {
            long p = t0 + j;
            long off = (blocks[p / a->block_size] * a->block_size + p % a->block_size) * stride
                       + kv * D;
            keys[j] = a->k_cache + off;
            values[j] = a->v_cache + off;
        }
        /* S^T = K Q^T, KBLOCK keys x 32 queries in registers */
        for (long j0 = 0; j0 < nk; j0 += KBLOCK) {
            long kb = nk - j0 < KBLOCK ? nk - j0 : KBLOCK;
            v16 acc[KBLOCK][2];
            for (int j = 0; j < KBLOCK; j++) acc[j][0] = acc[j][1] = (v16){0};
            if (kb == KBLOCK) {
                for (long d = 0; d < D; d++) {
                    v16 q0 = *(const v16 *)(qt + d * QV), q1 = *(const v16 *)(qt + d * QV + 16);
                    for (int j = 0; j < KBLOCK; j++) {
                        float kd = keys[j0 + j][d];
                        acc[j][0] += kd * q0;
                        acc[j][1] += kd * q1;
                    }
                }
            } else {
                for (long d = 0; d < D; d++) {
                    v16 q0 = *(const v16 *)(qt + d * QV), q1 = *(const v16 *)(qt + d * QV + 16);
                    for (long j = 0; j < kb; j++) {
                        float kd = keys[j0 + j][d];
                        acc[j][0] += kd * q0;
                        acc[j][1] += kd * q1;
                    }
                }
            }
            for (long j = 0; j < kb; j++) {
                *(v16 *)(st + (j0 + j) * QV) = acc[j][0];
                *(v16 *)(st + (j0 + j) * QV + 16) = acc[j][1];
            }
        }
        /* causal mask where the tile reaches past the first query's position */
        const v16 minus_inf = (v16){0} - INFINITY;
        if (t0 + nk - 1 > min_pos) {
            for (long j = 0; j < nk; j++) {
                int32_t key = (int32_t)(t0 + j);
                v16 *s = (v16 *)(st + j * QV);
                s[0] = select_lanes(pos0 >= key, s[0], minus_inf);
                s[1] = select_lanes(pos1 >= key, s[1], minus_inf);
            }
        }
        /* online softmax down the keys, every lane its own query */
        v16 t_max0 = m0, t_max1 = m1;
        for (long j = 0; j < nk; j++) {
            v16 s0 = *(const v16 *)(st + j * QV), s1 = *(const v16 *)(st + j * QV + 16);
            t_max0 = select_lanes(s0 > t_max0, s0, t_max0);
            t_max1 = select_lanes(s1 > t_max1, s1, t_max1);
        }
        /* a lane still at -inf has no key yet: keep its correction at 0 and its probs at 0 */
        v16 c0 = exp_nonpositive(m0 - t_max0), c1 = exp_nonpositive(m1 - t_max1);
        c0 = select_lanes(t_max0 == minus_inf, (v16){0}, c0);
        c1 = select_lanes(t_max1 == minus_inf, (v16){0}, c1);
        m0 = t_max0;
        m1 = t_max1;
        v16 sum0 = {0}, sum1 = {0};
        for (long j = 0; j < nk; j++) {
            v16 *s = (v16 *)(st + j * QV);
            s[0] = exp_nonpositive(s[0] - m0);
            s[1] = exp_nonpositive(s[1] - m1);
            sum0 += s[0];
            sum1 += s[1];
        }
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
        /* O^T = O^T * c + V^T P^T, eight dims at a time in registers */
        for (long d0 = 0; d0 < D; d0 += 8) {
            v16 o[8][2];
            for (int d = 0; d < 8; d++) {
                o[d][0] = *(const v16 *)(ot + (d0 + d) * QV) * c0;
                o[d][1] = *(const v16 *)(ot + (d0 + d) * QV + 16) * c1;
            }
            for (long j = 0; j < nk; j++) {
                v16 p0 = *(const v16 *)(st + j * QV), p1 = *(const v16 *)(st + j * QV + 16);
                const float *vj = values[j] + d0;
                for (int d = 0; d < 8; d++) {
                    o[d][0] += vj[d] * p0;
                    o[d][1] += vj[d] * p1;
                }
            }
            for (int d = 0; d < 8; d++) {
                *(v16 *)(ot + (d0 + d) * QV) = o[d][0];
                *(v16 *)(ot + (d0 + d) * QV + 16) = o[d][1];
            }
        }
    }
    float inv[QV];
    *(v16u *)inv = 1.0f / l0;
    *(v16u *)(inv + 16) = 1.0f / l1;
    for (long v = 0; v < count; v++) {
        long vv = first + v;
        float *dst = out + ((row0 + vv / G) * Hq + kv * G + vv % G) * D;
        for (long d = 0; d < D; d++) dst[d] = ot[d * QV + v] * inv[v];
    }
}
