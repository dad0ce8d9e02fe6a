/* Shared-prefix (cascade) levels of decode attention over a paged KV cache, float32 on CPU.
 *
 * A level is a span of KV blocks that several decode rows hold in common (forks of one
 * context, prefix-cache hits). Per-row decode reads the span once per row; here the rows'
 * queries are stacked and the span is read once per block of up to 64 queries, a matrix
 * product. Per KV head, a level's query vectors (member x query head of that KV head) are
 * taken 16 x NQ at a time (NQ 1-4, chosen per level to waste the fewest lanes) as
 * Q^T [D][16 NQ], so each key or value element is broadcast against all of them and the
 * online softmax runs down the keys with vertical ops only (the layout of paged_prefill.c,
 * without the causal mask). Long spans are cut into key chunks so that a single level still
 * keeps every core busy.
 *
 * Each level's result is merged by its natural-log LSE into the member rows' other parts,
 * in place: `out`/`lse` arrive holding what the decode kernel returned for the rows' own keys
 * (normalised; LSE -inf for an empty part) and leave holding the attention over both.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define KTILE 32      /* keys per softmax tile */
#define MAX_DIM 128
#define MAX_NQ 4      /* 16-lane query vectors per task: 64 queries */
#define MIN_CHUNK 256 /* keys per task at the least, when a span is cut for the cores */

typedef struct {
    long level, kv, first, t0, t1; /* query vectors first.. of (level, kv head), keys [t0, t1) */
    long result;                   /* offset of its (max, sum, O^T) in the results buffer */
} level_task;

typedef struct {
    long blocks, nq, lanes, first_task, chunk, chunks;
} level_shape;

typedef struct {
    const float *q, *k_cache, *v_cache;
    long Hq, Hkv, D, G, block_size;
    float scale;
} level_layout;

/* One task: query vectors [first, first + count) of KV head kv for a level whose members are
 * the rows `members` (vector v: member v / G, query head kv * G + v % G), against the span's
 * keys [t0, t1). Leaves per lane the running max, the sum of exp(score - max) and the
 * unnormalised output O^T [D][lanes] in `result`. */
#define LEVEL_TASK(NQ, KB, DB)                                                                \
    static void level_task_##NQ(const level_layout *a, const int64_t *members, long count,    \
                                long first, long kv, const int64_t *blocks, long t0, long t1, \
                                float *result) {                                              \
        enum { LANES = 16 * NQ };                                                             \
        const long D = a->D, G = a->G, stride = a->Hkv * D;                                   \
        float qt[MAX_DIM * LANES] __attribute__((aligned(64)));                               \
        float ot[MAX_DIM * LANES] __attribute__((aligned(64)));                               \
        float st[KTILE * LANES] __attribute__((aligned(64)));                                 \
        for (long v = 0; v < LANES; v++) {                                                    \
            /* padding lanes hold zero queries: finite scores, results never read */          \
            long vv = first + (v < count ? v : count - 1);                                    \
            const float *src = a->q + (members[vv / G] * a->Hq + kv * G + vv % G) * D;        \
            for (long d = 0; d < D; d++) qt[d * LANES + v] = v < count ? src[d] * a->scale : 0; \
        }                                                                                     \
        memset(ot, 0, sizeof(float) * D * LANES);                                             \
        v16 m[NQ], l[NQ];                                                                     \
        for (int i = 0; i < NQ; i++) {                                                        \
            m[i] = (v16){0} - INFINITY;                                                       \
            l[i] = (v16){0};                                                                  \
        }                                                                                     \
        const float *keys[KTILE], *values[KTILE], *ahead_k[KTILE], *ahead_v[KTILE];           \
        for (long tt = t0; tt < t1; tt += KTILE) {                                            \
            long nk = t1 - tt < KTILE ? t1 - tt : KTILE;                                      \
            for (long j = 0; j < nk; j++) {                                                   \
                long p = tt + j;                                                              \
                long off = (blocks[p / a->block_size] * a->block_size + p % a->block_size)    \
                           * stride + kv * D;                                                 \
                keys[j] = a->k_cache + off;                                                   \
                values[j] = a->v_cache + off;                                                 \
            }                                                                                 \
            /* the next tile's records, prefetched a few keys at a time during the scores */ \
            long next = t1 - (tt + KTILE) < KTILE ? t1 - (tt + KTILE) : KTILE;                \
            for (long j = 0; j < next; j++) {                                                 \
                long p = tt + KTILE + j;                                                      \
                long off = (blocks[p / a->block_size] * a->block_size + p % a->block_size)    \
                           * stride + kv * D;                                                 \
                ahead_k[j] = a->k_cache + off;                                                \
                ahead_v[j] = a->v_cache + off;                                                \
            }                                                                                 \
            /* S^T = K Q^T, KB keys x LANES queries in registers */                           \
            for (long j0 = 0; j0 < nk; j0 += KB) {                                            \
                long kb = nk - j0 < KB ? nk - j0 : KB;                                        \
                for (long j = j0; j < j0 + KB && j < next; j++)                               \
                    for (long line = 0; line < D; line += 16) {                               \
                        __builtin_prefetch(ahead_k[j] + line, 0, 1);                          \
                        __builtin_prefetch(ahead_v[j] + line, 0, 1);                          \
                    }                                                                         \
                v16 acc[KB][NQ];                                                              \
                for (int j = 0; j < KB; j++)                                                  \
                    for (int i = 0; i < NQ; i++) acc[j][i] = (v16){0};                        \
                /* a full block with the constant bound, so acc stays in registers */        \
                if (kb == KB) {                                                               \
                    for (long d = 0; d < D; d++) {                                            \
                        v16 qd[NQ];                                                           \
                        for (int i = 0; i < NQ; i++) qd[i] = *(const v16 *)(qt + d * LANES + 16 * i); \
                        for (int j = 0; j < KB; j++) {                                        \
                            float kd = keys[j0 + j][d];                                       \
                            for (int i = 0; i < NQ; i++) acc[j][i] += kd * qd[i];             \
                        }                                                                     \
                    }                                                                         \
                } else {                                                                      \
                    for (long d = 0; d < D; d++) {                                            \
                        v16 qd[NQ];                                                           \
                        for (int i = 0; i < NQ; i++) qd[i] = *(const v16 *)(qt + d * LANES + 16 * i); \
                        for (long j = 0; j < kb; j++) {                                       \
                            float kd = keys[j0 + j][d];                                       \
                            for (int i = 0; i < NQ; i++) acc[j][i] += kd * qd[i];             \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
                for (long j = 0; j < kb; j++)                                                 \
                    for (int i = 0; i < NQ; i++) *(v16 *)(st + (j0 + j) * LANES + 16 * i) = acc[j][i]; \
            }                                                                                 \
            /* online softmax down the keys, every lane its own query; the first tile makes */ \
            /* every lane's max finite (all lanes see every key) */                           \
            v16 corr[NQ];                                                                     \
            for (int i = 0; i < NQ; i++) {                                                    \
                v16 top = m[i];                                                               \
                for (long j = 0; j < nk; j++) {                                               \
                    v16 sj = *(const v16 *)(st + j * LANES + 16 * i);                         \
                    top = select_lanes(sj > top, sj, top);                                    \
                }                                                                             \
                corr[i] = tt == t0 ? (v16){0} : exp_nonpositive(m[i] - top);                  \
                m[i] = top;                                                                   \
                v16 sum = {0};                                                                \
                for (long j = 0; j < nk; j++) {                                               \
                    v16 *sj = (v16 *)(st + j * LANES + 16 * i);                               \
                    *sj = exp_nonpositive(*sj - top);                                         \
                    sum += *sj;                                                               \
                }                                                                             \
                l[i] = l[i] * corr[i] + sum;                                                  \
            }                                                                                 \
            /* O^T = O^T * corr + V^T P^T, DB dims at a time in registers */                  \
            for (long d0 = 0; d0 < D; d0 += DB) {                                             \
                v16 o[DB][NQ];                                                                \
                for (int d = 0; d < DB; d++)                                                  \
                    for (int i = 0; i < NQ; i++)                                              \
                        o[d][i] = *(const v16 *)(ot + (d0 + d) * LANES + 16 * i) * corr[i];   \
                for (long j = 0; j < nk; j++) {                                               \
                    v16 pj[NQ];                                                               \
                    for (int i = 0; i < NQ; i++) pj[i] = *(const v16 *)(st + j * LANES + 16 * i); \
                    const float *vj = values[j] + d0;                                         \
                    for (int d = 0; d < DB; d++)                                              \
                        for (int i = 0; i < NQ; i++) o[d][i] += vj[d] * pj[i];                \
                }                                                                             \
                for (int d = 0; d < DB; d++)                                                  \
                    for (int i = 0; i < NQ; i++) *(v16 *)(ot + (d0 + d) * LANES + 16 * i) = o[d][i]; \
            }                                                                                 \
        }                                                                                     \
        for (int i = 0; i < NQ; i++) {                                                        \
            *(v16u *)(result + 16 * i) = m[i];                                                \
            *(v16u *)(result + LANES + 16 * i) = l[i];                                        \
        }                                                                                     \
        memcpy(result + 2 * LANES, ot, sizeof(float) * D * LANES);                            \
    }

/* register blocks: KB keys x NQ and DB dims x NQ accumulators (DB divides 16) */
LEVEL_TASK(1, 16, 16)
LEVEL_TASK(2, 8, 8)
LEVEL_TASK(3, 5, 8)
LEVEL_TASK(4, 4, 4)

typedef void (*level_task_fn)(const level_layout *, const int64_t *, long, long, long,
                              const int64_t *, long, long, float *);

static void merge_level(const level_shape *shape, const level_task *tasks, const float *results,
                        const int64_t *members, long num_members, long Hq, long G, long D,
                        float *out, float *lse, int threads);

/* q, out [R, Hq, D], lse [R, Hq] (rows: whatever the caller indexes; out/lse hold the rows'
 * other parts). Level l: members rows[member_offsets[l] .. member_offsets[l + 1]), span the
 * first tokens[l] tokens of blocks[block_offsets[l] .. block_offsets[l + 1]) of the caches
 * [num_blocks, block_size, Hkv, D]. A row may belong to several levels (nested spans).
 * Returns 0, or -1 for unsupported sizes or no memory. */
int parrot_paged_levels(const float *q, long Hq, long Hkv, long D, const float *k_cache,
                        const float *v_cache, long block_size, long L,
                        const int64_t *member_offsets, const int64_t *rows,
                        const int64_t *block_offsets, const int64_t *blocks,
                        const int64_t *tokens, float scale, float *out, float *lse,
                        int threads) {
    if (D % 16 || D > MAX_DIM || Hkv < 1 || Hq % Hkv) return -1;
    if (L == 0) return 0;
    const long G = Hq / Hkv;
    level_shape *shape = malloc(sizeof(level_shape) * L);
    if (!shape) return -1;
    long base_tasks = 0;
    for (long l = 0; l < L; l++) {
        long vectors = (member_offsets[l + 1] - member_offsets[l]) * G;
        long nblocks = (vectors + 16 * MAX_NQ - 1) / (16 * MAX_NQ);
        long nq = (vectors + 16 * nblocks - 1) / (16 * nblocks);
        shape[l] = (level_shape){.blocks = nblocks, .nq = nq, .lanes = 16 * nq};
        base_tasks += Hkv * nblocks;
    }
    /* cut spans into key chunks until there are at least four tasks per thread, and a multiple
     * of the threads where one more cut makes it so (9 equal tasks on 2 threads leave one idle
     * for a ninth of the time) */
    long cuts = base_tasks >= 4L * threads ? 1 : (4L * threads + base_tasks - 1) / base_tasks;
    if ((base_tasks * cuts) % threads && (base_tasks * (cuts + 1)) % threads == 0) cuts++;
    long num_tasks = 0, result_floats = 0;
    for (long l = 0; l < L; l++) {
        level_shape *s = shape + l;
        long most = tokens[l] / MIN_CHUNK > 1 ? tokens[l] / MIN_CHUNK : 1;
        long chunks = cuts < most ? cuts : most;
        s->chunk = (tokens[l] + chunks - 1) / chunks;
        s->chunk = (s->chunk + KTILE - 1) / KTILE * KTILE;
        s->chunks = (tokens[l] + s->chunk - 1) / s->chunk;
        s->first_task = num_tasks;
        num_tasks += Hkv * s->blocks * s->chunks;
        result_floats += Hkv * s->blocks * s->chunks * (2 + D) * s->lanes;
    }
    level_task *tasks = malloc(sizeof(level_task) * num_tasks);
    float *results = malloc(sizeof(float) * (result_floats ? result_floats : 1));
    if (!tasks || !results) {
        free(shape);
        free(tasks);
        free(results);
        return -1;
    }
    /* task first_task + (kv * blocks + b) * chunks + c; results in the same order */
    long n = 0, offset = 0;
    for (long l = 0; l < L; l++) {
        const level_shape *s = shape + l;
        for (long kv = 0; kv < Hkv; kv++)
            for (long b = 0; b < s->blocks; b++)
                for (long c = 0; c < s->chunks; c++) {
                    long t0 = c * s->chunk, t1 = t0 + s->chunk < tokens[l] ? t0 + s->chunk : tokens[l];
                    tasks[n++] = (level_task){l, kv, b * s->lanes, t0, t1, offset};
                    offset += (2 + D) * s->lanes;
                }
    }
    static const level_task_fn by_nq[MAX_NQ + 1] = {0, level_task_1, level_task_2, level_task_3,
                                                    level_task_4};
    level_layout a = {q, k_cache, v_cache, Hq, Hkv, D, G, block_size, scale};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long t = 0; t < num_tasks; t++) {
        const level_task *task = tasks + t;
        const level_shape *s = shape + task->level;
        long vectors = (member_offsets[task->level + 1] - member_offsets[task->level]) * G;
        long count = vectors - task->first < s->lanes ? vectors - task->first : s->lanes;
        by_nq[s->nq](&a, rows + member_offsets[task->level], count, task->first, task->kv,
                     blocks + block_offsets[task->level], task->t0, task->t1,
                     results + task->result);
    }
    /* one level after another: nested levels share rows */
    for (long l = 0; l < L; l++)
        merge_level(shape + l, tasks, results, rows + member_offsets[l],
                    member_offsets[l + 1] - member_offsets[l], Hq, G, D, out, lse, threads);
    free(shape);
    free(tasks);
    free(results);
    return 0;
}

/* Folds a level's key chunks into its members' parts: weights exp(max - M) over the running
 * maximum M of all parts; an empty part (LSE -inf) weighs nothing. */
static void merge_level(const level_shape *s, const level_task *tasks, const float *results,
                        const int64_t *members, long num_members, long Hq, long G, long D,
                        float *out, float *lse, int threads) {
    const long lanes = s->lanes;
#pragma omp parallel for num_threads(threads) if (num_members * Hq * D >= 16384)
    for (long mh = 0; mh < num_members * Hq; mh++) {
        long member = mh / Hq, h = mh % Hq, kv = h / G;
        long vector = member * G + h % G, lane = vector % lanes;
        const level_task *first = tasks + s->first_task + (kv * s->blocks + vector / lanes) * s->chunks;
        float *o = out + (members[member] * Hq + h) * D;
        float *row_lse = lse + members[member] * Hq + h;
        float top = *row_lse;
        for (long c = 0; c < s->chunks; c++) {
            float m = results[first[c].result + lane];
            top = m > top ? m : top;
        }
        float acc[MAX_DIM];
        float own = *row_lse == -INFINITY ? 0.0f : expf(*row_lse - top);
        float total = own;
        for (long d = 0; d < D; d++) acc[d] = own == 0.0f ? 0.0f : o[d] * own;
        for (long c = 0; c < s->chunks; c++) {
            const float *r = results + first[c].result;
            float w = expf(r[lane] - top);
            total += w * r[lanes + lane];
            const float *ot = r + 2 * lanes + lane;
            for (long d = 0; d < D; d++) acc[d] += w * ot[d * lanes];
        }
        float inv = 1.0f / total;
        for (long d = 0; d < D; d++) o[d] = acc[d] * inv;
        *row_lse = top + logf(total);
    }
}
