/* Causal attention for chunks of query rows over a paged KV cache, float32 on CPU.
 *
 * Sequence s owns the n_s = rows[s] query rows from row first_row[s]: the last n_s of its
 * tokens[s] positions, whose K/V are already in the cache [num_blocks, block_size, Hkv, D] with
 * the rest of the sequence. Row i attends positions 0 .. tokens[s] - n_s + i. Keys are read in
 * place.
 *
 * The work is done transposed: a task takes QV = 32 query vectors (position x query head pairs
 * that share one KV head) as Q^T [D][QV], so every product broadcasts one key or value element
 * against query vectors of 8 (AVX2) or 16 (AVX-512) lanes, and the online softmax (running
 * max, sum, rescale) runs down the keys with no horizontal reductions. Keys come in tiles of
 * 32: their scores are masked (on the diagonal tiles only) and their max taken as the register
 * blocks are stored, the weights come from a cheaper e^x than expv_nonpositive
 * (vector_math.h's expv_scores), and O^T [D][32] is rescaled and accumulated once a tile, then transposed once at the end.
 * Tasks of (sequence, KV head, 32 query vectors) are spread over the threads, the longest
 * first. Written over the machine's own vector (vf, vector_math.h), with register blocks sized
 * to its register file.
 *
 * On an AVX2 Zen 3 core (98 GFLOP/s of FMA) one thread reaches ~65 GFLOP/s on the causal half
 * (benchmarks/attention.py --prefill): the score and output products take ~3/4 of the time,
 * the softmax ~1/10.
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
#define KVECS 2  /* query vectors per register block of the score product */
#define DBLOCK 8 /* output dims per register block (divides 16) */
#else
/* 16 registers: scores in blocks of 6 keys x 2 query vectors (a task's 4 vectors in two
 * passes), with the 2 query vectors and a broadcast: 12 FMA chains against the 8 of 2 keys x
 * 4 vectors, which ran a few % slower on Zen 3; outputs in blocks of 2 dims x 4 vectors, as
 * 6 x 2 measured no faster there. Tasks of 16 and 24 query vectors measured no faster. */
#define NQ 4
#define KBLOCK 6
#define KVECS 2
#define DBLOCK 2
#endif
#define KTILE 32 /* keys per softmax tile (48 and 60 measured no faster) */
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

/* Scores of kb keys against query vectors [i0, i0 + nv) into S^T (rows of QV), masked past
 * each query's position where `masked`, raising top (the running max per vector). */
static inline __attribute__((always_inline)) void scores(
    const float *const *keys, const float *qt, long D, int kb, int i0, int nv, float *st,
    int masked, long key0, const vi *qpos, vf *top) {
    vf acc[KBLOCK][NQ];
    for (int j = 0; j < kb; j++)
        for (int i = 0; i < nv; i++) acc[j][i] = (vf){0};
    for (long d = 0; d < D; d++) {
        vf qd[NQ];
        for (int i = 0; i < nv; i++)
            qd[i] = in_register(*(const vf *)(qt + d * QV + VF_LANES * (i0 + i)));
        for (int j = 0; j < kb; j++) {
            float kd = keys[j][d];
            for (int i = 0; i < nv; i++) acc[j][i] += kd * qd[i];
        }
    }
    const vf minus_inf = (vf){0} - INFINITY;
    for (int j = 0; j < kb; j++) {
        int32_t key = (int32_t)(key0 + j);
        for (int i = 0; i < nv; i++) {
            vf x = acc[j][i];
            if (masked) x = selectv(qpos[i0 + i] >= key, x, minus_inf);
            top[i0 + i] = selectv(x > top[i0 + i], x, top[i0 + i]);
            *(vf *)(st + j * QV + VF_LANES * (i0 + i)) = x;
        }
    }
}

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
        long b = t0 / a->block_size, slot = t0 % a->block_size; /* (one division a tile) */
        for (long j = 0; j < nk; j++) {
            long off = (blocks[b] * a->block_size + slot) * stride + kv * D;
            keys[j] = a->k_cache + off;
            values[j] = a->v_cache + off;
            if (++slot == a->block_size) b++, slot = 0;
        }
        /* the causal mask where the tile reaches past the first query's position; the tile's
         * max is taken as the scores are stored */
        const int masked = t0 + nk - 1 > min_pos;
        vf top[NQ];
        for (int i = 0; i < NQ; i++) top[i] = m[i];
        /* S^T = K Q^T in register blocks of keys x query vectors */
        long j0 = 0;
        for (; j0 + KBLOCK <= nk; j0 += KBLOCK)
            for (int h = 0; h < NQ; h += KVECS)
                scores(keys + j0, qt, D, KBLOCK, h, KVECS, st + j0 * QV, masked, t0 + j0, qpos,
                       top);
        for (; j0 + 2 <= nk; j0 += 2)
            scores(keys + j0, qt, D, 2, 0, NQ, st + j0 * QV, masked, t0 + j0, qpos, top);
        if (j0 < nk) scores(keys + j0, qt, D, 1, 0, NQ, st + j0 * QV, masked, t0 + j0, qpos, top);
        /* online softmax down the keys, every lane its own query; key 0 is in every lane's
         * first tile, so the running max is finite from then on */
        vf corr[NQ];
        for (int i = 0; i < NQ; i++) {
            corr[i] = t0 == 0 ? (vf){0} : expv_nonpositive(m[i] - top[i]);
            m[i] = top[i];
            vf sum = {0};
            for (long j = 0; j < nk; j++) {
                vf *sj = (vf *)(st + j * QV + VF_LANES * i);
                *sj = expv_scores(*sj - top[i]);
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
