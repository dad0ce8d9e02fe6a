/* Causal attention for chunks of query rows over a paged KV cache, float32 on CPU.
 *
 * Sequence s owns the n_s = rows[s] query rows from row first_row[s]: the last n_s of its
 * tokens[s] positions, whose K/V are already in the cache [num_blocks, block_size, Hkv, D] with
 * the rest of the sequence. Row i attends positions 0 .. tokens[s] - n_s + i. Keys are read in
 * place.
 *
 * The work is done transposed: a task takes QV = 32 query vectors (position x query head pairs
 * that share one KV head) as Q^T [D][QV], so every product broadcasts one key or value element
 * against 32 queries held in two 16-lane vectors (AVX-512) or four 8-lane ones (AVX2), and the
 * online softmax (running max, sum, rescale) runs down the keys with no horizontal reductions.
 * The output is kept as O^T [D][32] and transposed once at the end. Tasks of (sequence, KV
 * head, 32 query vectors) are spread over the threads, the longest first. Written over the
 * machine's own vector (vf, vector_math.h), with register blocks sized to its register file.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#if VF_LANES == 16
/* 32 registers: 8 keys x 2 query vectors of scores (or 8 dims x 2 of outputs), the 2 query
 * (or probability) vectors and the broadcast keys (or values). */
#define NQ 2     /* vectors of queries per task (1, 3 and 4 measured slower) */
#define KBLOCK 8 /* keys per register block of the score product */
#define DBLOCK 8 /* output dims per register block (divides 16) */
#else
/* 16 registers: 2 keys x 4 query vectors of scores (or 2 dims x 4 of outputs), the 4 query
 * (or probability) vectors and a broadcast. The same 32 query vectors per task as with 16
 * lanes; 16 (blocks of 6 keys x 2) and 24 (3 x 3, 4 dims x 3) measured the same on Zen 3. */
#define NQ 4
#define KBLOCK 2
#define DBLOCK 2
#endif
#define KTILE 32 /* keys per softmax tile */
#define QV (VF_LANES * NQ) /* query vectors per task */
#define MAX_DIM 128

#if VF_LANES == 16 || !defined(__AVX__) /* (no 32-byte registers: nothing to keep it in) */
static inline vf in_register(vf x) { return x; }
#else
/* GCC folds a vector that feeds several FMAs into each as a memory operand; with 8 lanes that
 * is a load per FMA, past what the load ports serve. This keeps it in a register (ymm). */
static inline vf in_register(vf x) {
    __asm__("" : "+x"(x));
    return x;
}
#endif

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

/* q, out [T, Hq, D] (contiguous); first_row, rows, tokens [S]; sequence s's block list starts
 * at blocks + first_block[s]. Rows of q that no sequence owns are left alone in out.
 * Returns 0, or -1 for bad sizes or no memory. */
int parrot_paged_prefill(const float *q, long S, const int64_t *first_row, const int64_t *rows,
                         const int64_t *tokens,
                         long Hq, long Hkv, long D, const float *k_cache, const float *v_cache,
                         long block_size, const int64_t *blocks, const int64_t *first_block,
                         float scale, float *out, int threads) {
    if (D % 16 || D > MAX_DIM || Hq % Hkv || Hkv < 1) return -1;
    const long G = Hq / Hkv;
    long num_tasks = 0;
    for (long s = 0; s < S; s++)
        num_tasks += Hkv * ((rows[s] * G + QV - 1) / QV);
    task_t *tasks = malloc(sizeof(task_t) * (num_tasks + 1));
    if (!tasks) return -1;
    /* longest first: within a sequence later query vectors see more keys */
    long n = 0;
    for (long s = 0; s < S; s++) {
        long vectors = rows[s] * G;
        if (vectors <= 0) continue; /* (0 - 1) / QV is 0 in C: a task that was not counted */
        for (long first = (vectors - 1) / QV * QV; first >= 0; first -= QV)
            for (long kv = 0; kv < Hkv; kv++) tasks[n++] = (task_t){s, kv, first};
    }
    layout_t a = {k_cache, v_cache, Hq, Hkv, D, G, block_size, scale};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long t = 0; t < num_tasks; t++) {
        const task_t *task = tasks + t;
        long s = task->seq;
        attend_task(&a, q, blocks + first_block[s], first_row[s], rows[s], tokens[s] - rows[s],
                    task->first, task->kv, out);
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
    const vf minus_inf = (vf){0} - INFINITY;
    vi qpos[NQ];
    vf m[NQ], l[NQ];
    for (int i = 0; i < NQ; i++) {
        qpos[i] = *(const vi *)(pos + VF_LANES * i);
        m[i] = minus_inf;
        l[i] = (vf){0};
    }
    const long last_key = pos[QV - 1]; /* positions rise with v: the last lane sees the most */
    const long min_pos = pos[0];
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
        /* S^T = K Q^T, KBLOCK keys x QV queries in registers */
        for (long j0 = 0; j0 < nk; j0 += KBLOCK) {
            long kb = nk - j0 < KBLOCK ? nk - j0 : KBLOCK;
            vf acc[KBLOCK][NQ];
            for (int j = 0; j < KBLOCK; j++)
                for (int i = 0; i < NQ; i++) acc[j][i] = (vf){0};
            if (kb == KBLOCK) {
                for (long d = 0; d < D; d++) {
                    vf qd[NQ];
                    for (int i = 0; i < NQ; i++)
                        qd[i] = in_register(*(const vf *)(qt + d * QV + VF_LANES * i));
                    for (int j = 0; j < KBLOCK; j++) {
                        float kd = keys[j0 + j][d];
                        for (int i = 0; i < NQ; i++) acc[j][i] += kd * qd[i];
                    }
                }
            } else {
                for (long d = 0; d < D; d++) {
                    vf qd[NQ];
                    for (int i = 0; i < NQ; i++) qd[i] = *(const vf *)(qt + d * QV + VF_LANES * i);
                    for (long j = 0; j < kb; j++) {
                        float kd = keys[j0 + j][d];
                        for (int i = 0; i < NQ; i++) acc[j][i] += kd * qd[i];
                    }
                }
            }
            for (long j = 0; j < kb; j++)
                for (int i = 0; i < NQ; i++) *(vf *)(st + (j0 + j) * QV + VF_LANES * i) = acc[j][i];
        }
        /* causal mask where the tile reaches past the first query's position */
        if (t0 + nk - 1 > min_pos) {
            for (long j = 0; j < nk; j++) {
                int32_t key = (int32_t)(t0 + j);
                vf *sj = (vf *)(st + j * QV);
                for (int i = 0; i < NQ; i++) sj[i] = selectv(qpos[i] >= key, sj[i], minus_inf);
            }
        }
        /* online softmax down the keys, every lane its own query; key 0 is in every lane's
         * first tile, so the running max is finite from then on */
        vf corr[NQ];
        for (int i = 0; i < NQ; i++) {
            vf top = m[i];
            for (long j = 0; j < nk; j++) {
                vf sj = *(const vf *)(st + j * QV + VF_LANES * i);
                top = selectv(sj > top, sj, top);
            }
            corr[i] = t0 == 0 ? (vf){0} : expv_nonpositive(m[i] - top);
            m[i] = top;
            vf sum = {0};
            for (long j = 0; j < nk; j++) {
                vf *sj = (vf *)(st + j * QV + VF_LANES * i);
                *sj = expv_nonpositive(*sj - top);
                sum += *sj;
            }
            l[i] = l[i] * corr[i] + sum;
        }
        /* O^T = O^T * corr + V^T P^T, DBLOCK dims at a time in registers */
        for (long d0 = 0; d0 < D; d0 += DBLOCK) {
            vf o[DBLOCK][NQ];
            for (int d = 0; d < DBLOCK; d++)
                for (int i = 0; i < NQ; i++)
                    o[d][i] = *(const vf *)(ot + (d0 + d) * QV + VF_LANES * i) * corr[i];
            for (long j = 0; j < nk; j++) {
                vf pj[NQ];
                for (int i = 0; i < NQ; i++)
                    pj[i] = in_register(*(const vf *)(st + j * QV + VF_LANES * i));
                const float *vj = values[j] + d0;
                for (int d = 0; d < DBLOCK; d++)
                    for (int i = 0; i < NQ; i++) o[d][i] += vj[d] * pj[i];
            }
            for (int d = 0; d < DBLOCK; d++)
                for (int i = 0; i < NQ; i++) *(vf *)(ot + (d0 + d) * QV + VF_LANES * i) = o[d][i];
        }
    }
    float inv[QV] __attribute__((aligned(64)));
    for (int i = 0; i < NQ; i++) *(vf *)(inv + VF_LANES * i) = 1.0f / l[i];
    for (long v = 0; v < count; v++) {
        long vv = first + v;
        float *dst = out + ((row0 + vv / G) * Hq + kv * G + vv % G) * D;
        for (long d = 0; d < D; d++) dst[d] = ot[d * QV + v] * inv[v];
    }
}
