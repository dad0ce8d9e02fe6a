/* Shared-prefix (cascade) levels of decode attention over a paged KV cache, float32 on CPU.
 *
 * A level is a span of KV blocks that several decode rows hold in common (forks of one
 * context, prefix-cache hits). Per-row decode reads the span once per row; here the rows'
 * queries are stacked and the span is read once per block of up to 64 queries, a matrix
 * product. Per KV head, a level's query vectors (member x query head of that KV head) are
 * taken NV native vectors at a time (16 lanes with AVX-512, NV 1-4; 8 with AVX2, NV 1-8;
 * chosen per level to waste the fewest lanes) as Q^T [D][lanes], so each key or value element
 * is broadcast against all of them and the online softmax runs down the keys with vertical ops
 * only (the layout of paged_prefill.c, without the causal mask). The products run in register
 * blocks sized to the register file (below); as paged_prefill.c does, a tile's max is taken as
 * its scores are stored and its weights come from the cheaper expv_scores (Zen 3, one thread,
 * 2026-11-30: 16 x 2048 / 64 x 2048 / 16 x 512 1.09x / 1.06x / 1.07x on a quiet machine,
 * 1.02-1.04x while it was shared). Long spans are cut into key chunks so that a single level
 * still keeps every core busy.
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

#if VF_LANES == 16
#define KTILE 32 /* keys per softmax tile */
#define SPLIT_PREFETCH 0
#else
#define KTILE 48 /* a multiple of AVX2's 6-key score blocks */
/* the next tile's values prefetched during the value products rather than with its keys
 * during the scores: half the burst; Zen 3, 2 threads, spans of 8192 keys 8-16% faster */
#define SPLIT_PREFETCH 1
#endif
#define MAX_DIM 128
#define MAX_LANES 64  /* queries per task at the most */
#define MAX_NV (MAX_LANES / VF_LANES) /* native vectors of queries per task: 4 (AVX-512), 8 */
#define MIN_CHUNK 256 /* keys per task at the least, when a span is cut for the cores */

typedef struct {
    long level, kv, first, t0, t1; /* query vectors first.. of (level, kv head), keys [t0, t1) */
    long result;                   /* offset of its (max, sum, O^T) in the results buffer */
} level_task;

typedef struct {
    long blocks, nv, lanes, first_task, chunk, chunks;
} level_shape;

typedef struct {
    const float *q, *k_cache, *v_cache;
    long Hq, Hkv, D, G, block_size;
    float scale;
} level_layout;

/* S^T = K Q^T for keys[0 .. kb) (kb <= KB) against SQ native query vectors, KB x SQ
 * accumulators in registers: st[j * lanes + VF_LANES * i] from qt[d * lanes + VF_LANES * i]. */
#define SCORE_BLOCK(SQ, KB)                                                                   \
    static inline void score_block_##SQ##_##KB(const float *qt, long lanes,                   \
                                               const float *const *keys, long kb, long D,     \
                                               float *st, vf *top) {                          \
        vf acc[KB][SQ];                                                                       \
        for (int j = 0; j < KB; j++)                                                          \
            for (int i = 0; i < SQ; i++) acc[j][i] = (vf){0};                                 \
        /* a full block with the constant bound, so acc stays in registers */                 \
        if (kb == KB) {                                                                       \
            for (long d = 0; d < D; d++) {                                                    \
                vf qd[SQ];                                                                    \
                for (int i = 0; i < SQ; i++) qd[i] = loadv(qt + d * lanes + VF_LANES * i);    \
                for (int j = 0; j < KB; j++) {                                                \
                    float kd = keys[j][d];                                                    \
                    for (int i = 0; i < SQ; i++) acc[j][i] += kd * qd[i];                     \
                }                                                                             \
            }                                                                                 \
        } else {                                                                              \
            for (long d = 0; d < D; d++) {                                                    \
                vf qd[SQ];                                                                    \
                for (int i = 0; i < SQ; i++) qd[i] = loadv(qt + d * lanes + VF_LANES * i);    \
                for (long j = 0; j < kb; j++) {                                               \
                    float kd = keys[j][d];                                                    \
                    for (int i = 0; i < SQ; i++) acc[j][i] += kd * qd[i];                     \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (long j = 0; j < kb; j++)                                                         \
            for (int i = 0; i < SQ; i++) {                                                    \
                top[i] = selectv(acc[j][i] > top[i], acc[j][i], top[i]);                      \
                storev(st + j * lanes + VF_LANES * i, acc[j][i]);                             \
            }                                                                                 \
    }

/* O^T = O^T * corr + V^T P^T for dims [d0, d0 + DB) and SQ native query vectors, DB x SQ
 * accumulators in registers, over keys [0, nk): ot and st point at the block's first lane. */
#define VALUE_BLOCK(SQ, DB)                                                                   \
    static inline void value_block_##SQ##_##DB(float *ot, long lanes, const float *st,        \
                                               const vf *corr, const float *const *values,    \
                                               long nk, long d0) {                            \
        vf o[DB][SQ];                                                                         \
        for (int d = 0; d < DB; d++)                                                          \
            for (int i = 0; i < SQ; i++)                                                      \
                o[d][i] = loadv(ot + (d0 + d) * lanes + VF_LANES * i) * corr[i];              \
        for (long j = 0; j < nk; j++) {                                                       \
            vf pj[SQ];                                                                        \
            for (int i = 0; i < SQ; i++) pj[i] = loadv(st + j * lanes + VF_LANES * i);        \
            const float *vj = values[j] + d0;                                                 \
            for (int d = 0; d < DB; d++)                                                      \
                for (int i = 0; i < SQ; i++) o[d][i] += vj[d] * pj[i];                        \
        }                                                                                     \
        for (int d = 0; d < DB; d++)                                                          \
            for (int i = 0; i < SQ; i++) storev(ot + (d0 + d) * lanes + VF_LANES * i, o[d][i]); \
    }

/* The score block of keys [j0, j0 + kb) against all NV query vectors, SQ at a time (the last
 * RS alone where SQ does not divide NV). */
#define SCORE_STEP(NV, SQ, RS, KB)                                                            \
    do {                                                                                      \
        int i0 = 0;                                                                           \
        for (; i0 + SQ <= NV; i0 += SQ)                                                       \
            score_block_##SQ##_##KB(qt + VF_LANES * i0, LANES, keys + j0, kb, D,              \
                                    st + j0 * LANES + VF_LANES * i0, top + i0);               \
        if (NV % SQ)                                                                          \
            score_block_##RS##_##KB(qt + VF_LANES * i0, LANES, keys + j0, kb, D,              \
                                    st + j0 * LANES + VF_LANES * i0, top + i0);               \
    } while (0)

/* The value block of dims [d0, d0 + DB) for all NV query vectors, VQ at a time (the last RV
 * alone where VQ does not divide NV). */
#define VALUE_STEP(NV, VQ, RV, DB)                                                            \
    do {                                                                                      \
        int i0 = 0;                                                                           \
        for (; i0 + VQ <= NV; i0 += VQ)                                                       \
            value_block_##VQ##_##DB(ot + VF_LANES * i0, LANES, st + VF_LANES * i0,            \
                                    corr + i0, values, nk, d0);                               \
        if (NV % VQ)                                                                          \
            value_block_##RV##_##DB(ot + VF_LANES * i0, LANES, st + VF_LANES * i0,            \
                                    corr + i0, values, nk, d0);                               \
    } while (0)

/* The dims past the last whole DB block: none where DB divides 16 (and so D); with AVX2's
 * DB = 6 the last 4 or 2 (D % 6). */
#if VF_LANES == 16
#define VALUE_TAIL(NV, VQ, RV)
#else
#define VALUE_TAIL(NV, VQ, RV)                                                                \
    if (D - d0 >= 4) {                                                                        \
        VALUE_STEP(NV, VQ, RV, 4);                                                            \
        d0 += 4;                                                                              \
    }                                                                                         \
    if (D - d0 >= 2) VALUE_STEP(NV, VQ, RV, 2);
#endif

/* The records (key and value rows of KV head kv) of the span's keys [t, t + n), one division
 * for them all: a task computes each tile's once, the tile before it (for the prefetch). Two
 * divisions a key before (Zen 3, one thread, 2026-11-30, shared machine: 16 x 2048 1.045x,
 * 4 x 2048 1.05x, 16 x 512 1.02x, 64 x 2048 1.00x over 100 interleaved rounds). */
static inline void tile_records(const level_layout *a, const int64_t *blocks, long kv, long t,
                                long n, const float **keys, const float **values) {
    long b = t / a->block_size, slot = t % a->block_size, stride = a->Hkv * a->D;
    for (long j = 0; j < n; j++) {
        long off = (blocks[b] * a->block_size + slot) * stride + kv * a->D;
        keys[j] = a->k_cache + off;
        values[j] = a->v_cache + off;
        if (++slot == a->block_size) b++, slot = 0;
    }
}

/* One task: query vectors [first, first + count) of KV head kv for a level whose members are
 * the rows `members` (vector v: member v / G, query head kv * G + v % G), against the span's
 * keys [t0, t1), NV native vectors of them (LANES = VF_LANES x NV lanes). Leaves per lane the
 * running max, the sum of exp(score - max) and the unnormalised output O^T [D][lanes] in
 * `result`. The products run in register blocks: scores KB keys x SQ vectors (the last RS
 * vectors, when SQ does not divide NV, in a block of their own), values DB dims x VQ vectors
 * (the last RV likewise). */
#define LEVEL_TASK(NV, SQ, KB, RS, VQ, DB, RV)                                                \
    static void level_task_##NV(const level_layout *a, const int64_t *members, long count,    \
                                long first, long kv, const int64_t *blocks, long t0, long t1, \
                                float *result) {                                              \
        enum { LANES = VF_LANES * NV };                                                       \
        _Static_assert(NV % SQ == 0 || NV % SQ == RS, "score remainder");                     \
        _Static_assert(NV % VQ == 0 || NV % VQ == RV, "value remainder");                     \
        const long D = a->D, G = a->G;                                                        \
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
        vf m[NV], l[NV];                                                                      \
        for (int i = 0; i < NV; i++) {                                                        \
            m[i] = (vf){0} - INFINITY;                                                        \
            l[i] = (vf){0};                                                                   \
        }                                                                                     \
        /* key and value rows of this tile, then of the next: each tile's computed once */    \
        const float *records[4][KTILE];                                                       \
        tile_records(a, blocks, kv, t0, t1 - t0 < KTILE ? t1 - t0 : KTILE, records[0],        \
                     records[1]);                                                             \
        for (long tt = t0, cur = 0; tt < t1; tt += KTILE, cur ^= 2) {                         \
            long nk = t1 - tt < KTILE ? t1 - tt : KTILE;                                      \
            const float *const *keys = records[cur], *const *values = records[cur + 1];       \
            const float **ahead_k = records[cur ^ 2], **ahead_v = records[(cur ^ 2) + 1];     \
            /* the next tile's records, prefetched a few keys at a time during the scores */ \
            /* (AVX2: its keys there, its values during the value products) */               \
            long next = t1 - (tt + KTILE) < KTILE ? t1 - (tt + KTILE) : KTILE;                \
            tile_records(a, blocks, kv, tt + KTILE, next, ahead_k, ahead_v);                  \
            /* S^T = K Q^T, KB keys at a time; the tile's max per lane as they are stored */  \
            vf top[NV];                                                                       \
            for (int i = 0; i < NV; i++) top[i] = m[i];                                       \
            for (long j0 = 0; j0 < nk; j0 += KB) {                                            \
                long kb = nk - j0 < KB ? nk - j0 : KB;                                        \
                for (long j = j0; j < j0 + KB && j < next; j++)                               \
                    for (long line = 0; line < D; line += 16) {                               \
                        __builtin_prefetch(ahead_k[j] + line, 0, 1);                          \
                        if (!SPLIT_PREFETCH) __builtin_prefetch(ahead_v[j] + line, 0, 1);     \
                    }                                                                         \
                SCORE_STEP(NV, SQ, RS, KB);                                                   \
            }                                                                                 \
            /* online softmax down the keys, every lane its own query; the first tile makes */ \
            /* every lane's max finite (all lanes see every key) */                           \
            vf corr[NV];                                                                      \
            for (int i = 0; i < NV; i++) {                                                    \
                corr[i] = tt == t0 ? (vf){0} : expv_nonpositive(m[i] - top[i]);               \
                m[i] = top[i];                                                                \
                vf sum = {0};                                                                 \
                for (long j = 0; j < nk; j++) {                                               \
                    float *sj = st + j * LANES + VF_LANES * i;                                \
                    vf p = expv_scores(loadv(sj) - top[i]);                                   \
                    storev(sj, p);                                                            \
                    sum += p;                                                                 \
                }                                                                             \
                l[i] = l[i] * corr[i] + sum;                                                  \
            }                                                                                 \
            /* O^T = O^T * corr + V^T P^T, DB dims at a time */                               \
            long d0 = 0, pv = 0, per = (next * DB + D - 1) / D;                               \
            for (; d0 + DB <= D; d0 += DB) {                                                  \
                if (SPLIT_PREFETCH)                                                           \
                    for (long e = pv + per < next ? pv + per : next; pv < e; pv++)            \
                        for (long line = 0; line < D; line += 16)                             \
                            __builtin_prefetch(ahead_v[pv] + line, 0, 1);                     \
                VALUE_STEP(NV, VQ, RV, DB);                                                   \
            }                                                                                 \
            VALUE_TAIL(NV, VQ, RV)                                                            \
            if (SPLIT_PREFETCH)                                                               \
                for (; pv < next; pv++)                                                       \
                    for (long line = 0; line < D; line += 16)                                 \
                        __builtin_prefetch(ahead_v[pv] + line, 0, 1);                         \
        }                                                                                     \
        for (int i = 0; i < NV; i++) {                                                        \
            storev(result + VF_LANES * i, m[i]);                                              \
            storev(result + LANES + VF_LANES * i, l[i]);                                      \
        }                                                                                     \
        memcpy(result + 2 * LANES, ot, sizeof(float) * D * LANES);                            \
    }

#if VF_LANES == 16
/* 32 registers: KB keys x NV and DB dims x NV accumulators (DB divides 16), one block */
SCORE_BLOCK(1, 16) SCORE_BLOCK(2, 8) SCORE_BLOCK(3, 5) SCORE_BLOCK(4, 4)
VALUE_BLOCK(1, 16) VALUE_BLOCK(2, 8) VALUE_BLOCK(3, 8) VALUE_BLOCK(4, 4)
LEVEL_TASK(1, 1, 16, 1, 1, 16, 1)
LEVEL_TASK(2, 2, 8, 2, 2, 8, 2)
LEVEL_TASK(3, 3, 5, 3, 3, 8, 3)
LEVEL_TASK(4, 4, 4, 4, 4, 4, 4)
#else
/* 16 registers of 8 lanes: blocks of 12 accumulators beside the 2 query or probability
 * vectors they share and one broadcast; an odd NV's last vector goes alone. Zen 3, one thread,
 * 2026-11-29: 3 vectors x 4 keys/dims (GCC then reads the queries from memory) were 8-15%
 * slower, 2 x 4 (8 accumulators) 5-10%; 32 queries per task instead of 64 no faster. */
SCORE_BLOCK(1, 12) SCORE_BLOCK(1, 6) SCORE_BLOCK(2, 6)
VALUE_BLOCK(1, 6) VALUE_BLOCK(2, 6) VALUE_BLOCK(1, 4) VALUE_BLOCK(2, 4) VALUE_BLOCK(1, 2)
VALUE_BLOCK(2, 2)
LEVEL_TASK(1, 1, 12, 1, 1, 6, 1)
LEVEL_TASK(2, 2, 6, 2, 2, 6, 2)
LEVEL_TASK(3, 2, 6, 1, 2, 6, 1)
LEVEL_TASK(4, 2, 6, 2, 2, 6, 2)
LEVEL_TASK(5, 2, 6, 1, 2, 6, 1)
LEVEL_TASK(6, 2, 6, 2, 2, 6, 2)
LEVEL_TASK(7, 2, 6, 1, 2, 6, 1)
LEVEL_TASK(8, 2, 6, 2, 2, 6, 2)
#endif

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
        long nblocks = (vectors + MAX_LANES - 1) / MAX_LANES;
        long nv = (vectors + VF_LANES * nblocks - 1) / (VF_LANES * nblocks);
        shape[l] = (level_shape){.blocks = nblocks, .nv = nv, .lanes = VF_LANES * nv};
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
#if VF_LANES == 16
    static const level_task_fn by_nv[MAX_NV + 1] = {0, level_task_1, level_task_2, level_task_3,
                                                    level_task_4};
#else
    static const level_task_fn by_nv[MAX_NV + 1] = {0,            level_task_1, level_task_2,
                                                    level_task_3, level_task_4, level_task_5,
                                                    level_task_6, level_task_7, level_task_8};
#endif
    level_layout a = {q, k_cache, v_cache, Hq, Hkv, D, G, block_size, scale};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long t = 0; t < num_tasks; t++) {
        const level_task *task = tasks + t;
        const level_shape *s = shape + task->level;
        long vectors = (member_offsets[task->level + 1] - member_offsets[task->level]) * G;
        long count = vectors - task->first < s->lanes ? vectors - task->first : s->lanes;
        by_nv[s->nv](&a, rows + member_offsets[task->level], count, task->first, task->kv,
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
