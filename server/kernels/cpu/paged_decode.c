/* Decode attention over a paged KV cache, float32 on CPU: one call for every decode row.
 *
 * Each row (one sequence's single query token) attends its own key span, given as a list of
 * physical blocks and a token count; keys are read in place from the cache
 * [num_blocks, block_size, Hkv, D], never gathered. The Hq / Hkv query heads that share a KV
 * head are computed together, so every key and value vector is loaded once per row.
 *
 * Work is split into tasks of (row, chunk of at most `chunk` tokens; 0: `auto_chunk`) so that
 * a single long row still keeps every core busy; a task walks its tokens in order, all heads
 * at once, keeping an online softmax per head (running max, sum and unnormalised output), and
 * a second pass merges a row's chunks by their maxima. Outputs the normalised attention and
 * its natural-log LSE (empty rows: output 0, LSE -inf), so the caller can merge it with
 * shared-prefix parts.
 *
 * With the KV out of the CPU caches (every layer's, in a model step) the time is about the
 * compute's plus the memory's rather than the larger of the two: on Zen 3 (2 cores) 32 rows of
 * 600 tokens read ~18 GB/s of a ~34 GB/s floor, each tile's arithmetic taking about as long as
 * its loads would alone. The loads are prefetched in software (the hardware prefetcher alone
 * was 7-22% slower): a walk over the task's blocks a tile or two ahead, a few lines at a time
 * between the head passes, as a burst stalls the core until memory serves it (issuing the
 * same lines in the first half of the tile was 20% slower than spread over all of it, and
 * issuing them inside the loops of FMAs slowed the arithmetic by 15-30%; Zen 3, 2026-11-30).
 *
 * Scores of 16 keys are computed as partial-sum vectors reduced together by a transpose tree.
 * The softmax takes VF_LANES heads at a time: their tile maxima by one max tree, their
 * corrections by one vector exp, their sums by one add tree, the weights by the prefill
 * kernel's degree-5 e^x (vector_math.h's expv_scores, relative error 2e-7). Head dims 16, 32,
 * 64 and 128 (others: the caller falls back). Written over the machine's own vector `vf`
 * (vector_math.h): with AVX-512 (16 lanes) a tile's 16 partial sums reduce to one vector of
 * scores per head, with the query held in registers; with AVX2 (8 lanes, 16 registers) a tile
 * is two halves of 8 keys, scored for a KV head's query heads 3 (or 2) at a time in quarters
 * of 4 keys (12 accumulators, 3 query vectors and a key vector: each key vector loaded once
 * for the 3 heads) and reduced by an 8-way tree split before its last level, and the output is
 * accumulated for the same 3 (or 2) heads, 4 vectors each, so a value vector is loaded once
 * for them (a lone head: 8 keys, then 8 output vectors, at a time; head dim 128 in two
 * halves).
 *
 * Warm, one thread, SmolLM2's 9 x 64 heads (GQA 3), before the two changes below: ~1.0 us a
 * 16-token tile, about 55% of it in the two loops of FMAs (~1.3 FMAs a cycle of the 2), the
 * rest softmax (~13%), prefetch walk, reduction trees and pointers (perf, Zen 3, 2026-11-30).
 * Then (one thread, the old and new builds called in turn in one process, CPU time, median of
 * the paired ratios, Zen 3, 2026-11-30; cold: rounds over 30 layer-sized caches of 32 x 600,
 * 16 x 600 and 16 x 2088 tokens):
 * - the softmax of VF_LANES heads at once, against a head at a time (a max and a sum by
 *   halving, a scalar expf when the max rose, the degree-7 expv_nonpositive): warm 1.01-1.10x,
 *   cold 1.05-1.10x, about 1.04x of it the cheaper exp;
 * - the score pass shared by 3 heads (7 loads for 12 FMAs), against a head at a time (8
 *   accumulators, the keys as FMA memory operands: 9 loads for 8 FMAs): warm 1.03-1.06x, cold
 *   1.05-1.11x, 32 x 128 heads (GQA 4) warm 1.15-1.18x. Without the empty asm that keeps the
 *   query and key vectors in registers, GCC folds the key loads back into the FMAs (3 loads
 *   of each key vector): warm no faster than a head at a time (an earlier try of this layout
 *   measured 3-6% slower there, benchmarks/README), cold 1.08-1.09x.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

/* tokens prefetched by the end of a tile: those of two more (one more measured the same) */
#define AHEAD (3 * TILE)
#define MAX_HEADS 64
#define MAX_DIM 128

/* 16 keys a tile: one vector of scores per head with 16 lanes, two with 8 (8-key tiles with 8
 * lanes measured the same or up to 10% slower, Zen 3, 2026-11-29) */
#define TILE 16
#define SV (TILE / VF_LANES) /* score vectors per head and tile */
#if VF_LANES == 16
#define LANE_INDEX {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#else
#define LANE_INDEX {0, 1, 2, 3, 4, 5, 6, 7}
#endif
#define QB 8 /* output vectors held in registers at once (all of a head's with 16 lanes) */

static inline vf addv(vf a, vf b) { return a + b; }

/* lane-wise max as one instruction (vmaxps; a compare and a select otherwise) */
static inline vf maxv(vf a, vf b) {
#if VF_LANES == 8 && defined(__AVX__)
    return (vf)__builtin_ia32_maxps256(a, b);
#else
    return selectv(a > b, a, b);
#endif
}

#if VF_LANES == 16
/* [16 vectors of partial sums] -> one vector whose lane j is the sum of vector j's lanes:
 * a transpose-and-add tree, 30 shuffles for 16 dot products instead of 16 serial reductions.
 * (With OP maxv, lane j is vector j's largest lane.) */
#define LANES_TREE(NAME, OP)                                                                  \
static inline vf NAME(const vf p[16]) {                                                       \
    const vi h8a = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};                  \
    const vi h8b = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};            \
    const vi h4a = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};                \
    const vi h4b = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};              \
    const vi h2a = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};                \
    const vi h2b = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};              \
    const vi h1a = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};               \
    const vi h1b = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};               \
    vf a[8], b[4], c[2];                                                                      \
    for (int i = 0; i < 8; i++)                                                               \
        a[i] = OP(__builtin_shuffle(p[2 * i], p[2 * i + 1], h8a),                             \
                  __builtin_shuffle(p[2 * i], p[2 * i + 1], h8b));                            \
    for (int i = 0; i < 4; i++)                                                               \
        b[i] = OP(__builtin_shuffle(a[2 * i], a[2 * i + 1], h4a),                             \
                  __builtin_shuffle(a[2 * i], a[2 * i + 1], h4b));                            \
    for (int i = 0; i < 2; i++)                                                               \
        c[i] = OP(__builtin_shuffle(b[2 * i], b[2 * i + 1], h2a),                             \
                  __builtin_shuffle(b[2 * i], b[2 * i + 1], h2b));                            \
    return OP(__builtin_shuffle(c[0], c[1], h1a), __builtin_shuffle(c[0], c[1], h1b));        \
}
#else
/* [8 vectors of partial sums] -> one vector whose lane j is the sum of vector j's lanes. The
 * first two levels shuffle within 128-bit halves (vshufps), the last swaps halves
 * (vperm2f128): 14 shuffles and 7 adds for 8 dot products. */
#define LANES_TREE(NAME, OP)                                                                  \
/* the first two levels over 4 vectors: per 128-bit half, the half-sums of the 4 */           \
static inline vf NAME##_quarter(const vf p[4]) {                                              \
    const vi h2a = {0, 1, 8, 9, 4, 5, 12, 13}, h2b = {2, 3, 10, 11, 6, 7, 14, 15};            \
    const vi h1a = {0, 2, 8, 10, 4, 6, 12, 14}, h1b = {1, 3, 9, 11, 5, 7, 13, 15};            \
    vf a[2];                                                                                  \
    for (int i = 0; i < 2; i++) /* per half: [p0 e0+e2, p0 e1+e3, p1 e0+e2, p1 e1+e3] */      \
        a[i] = OP(__builtin_shuffle(p[2 * i], p[2 * i + 1], h2a),                             \
                  __builtin_shuffle(p[2 * i], p[2 * i + 1], h2b));                            \
    return OP(__builtin_shuffle(a[0], a[1], h1a), __builtin_shuffle(a[0], a[1], h1b));        \
}                                                                                             \
/* the last level: two quarters' halves added across */                                       \
static inline vf NAME##_halves(vf b0, vf b1) {                                                \
    const vi h4a = {0, 1, 2, 3, 8, 9, 10, 11}, h4b = {4, 5, 6, 7, 12, 13, 14, 15};            \
    return OP(__builtin_shuffle(b0, b1, h4a), __builtin_shuffle(b0, b1, h4b));                \
}                                                                                             \
static inline vf NAME(const vf p[8]) {                                                        \
    return NAME##_halves(NAME##_quarter(p), NAME##_quarter(p + 4));                           \
}
#endif
LANES_TREE(sum_lanes_tree, addv)
LANES_TREE(max_lanes_tree, maxv)

typedef struct {
    float max, sum;
} softmax_state;

/* Walks a task's tokens ahead of the compute, prefetching each record's lines (K and V at the
 * same offset). A block's records are contiguous, so the walk is over runs of floats and only
 * a new block costs a table lookup. Each tile moves its end to `AHEAD` tokens past the tile's
 * start and spreads the lines still to fetch evenly over the tile's prefetch points. A task
 * issues its first tile's lines in one burst before it starts (its first tile then spreads
 * the next two tiles' lines, at twice the usual pace). */
typedef struct {
    const float *k, *v;
    const int64_t *blocks;
    long block_size, token_stride;
    long pos, end;   /* floats [pos, end) of the current run, from the cache start */
    long token;      /* where the next run starts */
    long limit;      /* the walk stops short of this token (raised each tile) */
    long per_point;  /* line pairs per call, set each tile */
} prefetcher;

static inline int next_run(prefetcher *p) {
    if (p->token >= p->limit) return 0;
    long in_block = p->token % p->block_size;
    long n = p->block_size - in_block;
    n = n < p->limit - p->token ? n : p->limit - p->token;
    p->pos = (p->blocks[p->token / p->block_size] * p->block_size + in_block) * p->token_stride;
    p->end = p->pos + n * p->token_stride;
    p->token += n;
    return 1;
}

static inline void prefetch_some(prefetcher *p) {
    for (long n = p->per_point; n > 0; n--) {
        if (p->pos >= p->end && !next_run(p)) return;
        __builtin_prefetch(p->k + p->pos, 0, 1);
        __builtin_prefetch(p->v + p->pos, 0, 1);
        p->pos += 16;
    }
}

/* partial[j] (j < VF_LANES): the vector of partial sums of query head h . keys[j] (KV head
 * kv), over the DIM / VF_LANES = NV vectors of a head; `live` keys of them are real (the
 * others point at a real record and are masked later). Then issues a share of the prefetches. */
#if VF_LANES == 16
/* the query in NV <= 8 registers, each key's chain of NV FMAs in turn */
#define SCORE_KEYS(DIM, NV, keys, live)                                                       \
    do {                                                                                      \
        vf q[NV];                                                                             \
        for (int c = 0; c < NV; c++) q[c] = loadv(qs + h * DIM + c * VF_LANES);               \
        for (long j = 0; j < VF_LANES; j++) {                                                 \
            vf sum = {0};                                                                     \
            if (j < (live))                                                                   \
                for (int c = 0; c < NV; c++)                                                  \
                    sum += q[c] * loadv((keys)[j] + kv * DIM + c * VF_LANES);                 \
            partial[j] = sum;                                                                 \
        }                                                                                     \
        prefetch_some(&pf);                                                                   \
    } while (0)
#define SHARED_VALUES(G) 0
#define SCORE_GROUPS(DIM, NV, kv) ((void)0)
#define OUTPUT_GROUPS(DIM, NV, kv) ((void)0)
#else
/* 8 accumulators side by side, one query vector at a time (any NV: 16 for DIM 128); the
 * key vectors are FMA memory operands, so 9 of the 16 registers are used. A tile wholly past
 * the last token is skipped. */
#define SCORE_KEYS(DIM, NV, keys, live)                                                       \
    do {                                                                                      \
        for (int j = 0; j < VF_LANES; j++) partial[j] = (vf){0};                              \
        if ((live) <= 0) break;                                                               \
        for (int c = 0; c < NV; c++) {                                                        \
            vf qc = loadv(qs + h * DIM + c * VF_LANES);                                       \
            for (int j = 0; j < VF_LANES; j++)                                                \
                partial[j] += qc * loadv((keys)[j] + kv * DIM + c * VF_LANES);                \
        }                                                                                     \
        prefetch_some(&pf);                                                                   \
    } while (0)

/* The output pass of GB (2 or 3) query heads h0.. of KV head kv over the tile's n tokens,
 * each value vector loaded once for the GB heads: QC = 4 output vectors a head at a time, so
 * 4 GB accumulators, GB broadcast probabilities and one value vector (16 registers with GB 3).
 * Per token that is GB + QC + 1 loads (probabilities, values, the record's pointer) for 4 GB
 * FMAs instead of 10 for 8 (Zen 3: the per-head loop, 8 FMAs with memory operands, was
 * load-bound; warm, the whole tile 3-6% faster for G = 3, D = 64). A prefetch point every 8
 * tokens keeps about as many points a tile as the per-head loops had: with one per block, the
 * larger bursts lost the gain with the KV cold. */
#define OUTPUT_SHARED(DIM, NV, GB, h0)                                                        \
    do {                                                                                      \
        enum { QC = NV < 4 ? NV : 4 };                                                        \
        for (int c0 = 0; c0 < NV; c0 += QC) {                                                 \
            vf o[GB][QC];                                                                     \
            for (int g = 0; g < GB; g++)                                                      \
                for (int c = 0; c < QC; c++)                                                  \
                    o[g][c] = loadv(acc + ((h0) + g) * DIM + (c0 + c) * VF_LANES)             \
                              * corrections[(h0) + g];                                        \
            for (long j0 = 0; j0 < n; j0 += VF_LANES) { /* a prefetch point per 8 tokens */  \
              for (long j = j0; j < j0 + VF_LANES && j < n; j++) {                            \
                vf b[GB];                                                                     \
                for (int g = 0; g < GB; g++) /* x - 0 folds to a broadcast; 0 + x does not */ \
                    b[g] = tile_scores[((h0) + g) * SV + j / VF_LANES][j % VF_LANES]          \
                           - (vf){0};                                                         \
                for (int c = 0; c < QC; c++) {                                                \
                    vf vc = loadv(values[j] + kv * DIM + (c0 + c) * VF_LANES);                \
                    /* in a register: GCC would reload it as each FMA's memory operand */     \
                    __asm__("" : "+x"(vc));                                                   \
                    for (int g = 0; g < GB; g++) o[g][c] += b[g] * vc;                        \
                }                                                                             \
              }                                                                               \
              prefetch_some(&pf);                                                             \
            }                                                                                 \
            for (int g = 0; g < GB; g++)                                                      \
                for (int c = 0; c < QC; c++)                                                  \
                    storev(acc + ((h0) + g) * DIM + (c0 + c) * VF_LANES, o[g][c]);            \
        }                                                                                     \
    } while (0)

/* The score pass of GB (2 or 3) query heads h0.. of KV head kv, each key vector loaded once
 * for the GB heads: 4 keys at a time, 4 GB accumulators, GB query vectors and the key vector
 * in registers (16 with GB 3); each quarter's 4 partial sums per head are reduced by the first
 * two levels of the tree, a half's two quarters by its last level. */
#define SCORE_SHARED(DIM, NV, GB, h0)                                                         \
    do {                                                                                      \
        for (int s = 0; s < SV; s++) {                                                        \
            const float *const *ks = keys + s * VF_LANES;                                     \
            long live = n - s * VF_LANES;                                                     \
            if (live <= 0) {                                                                  \
                for (int g = 0; g < GB; g++) tile_scores[((h0) + g) * SV + s] = minus_inf;    \
                continue;                                                                     \
            }                                                                                 \
            vf quarter[2][GB];                                                                \
            for (int r = 0; r < 2; r++) {                                                     \
                vf part[GB][4];                                                               \
                for (int g = 0; g < GB; g++)                                                  \
                    for (int j = 0; j < 4; j++) part[g][j] = (vf){0};                         \
                for (int c = 0; c < NV; c++) {                                                \
                    vf qv[GB];                                                                \
                    for (int g = 0; g < GB; g++) {                                            \
                        qv[g] = loadv(qs + ((h0) + g) * DIM + c * VF_LANES);                  \
                        __asm__("" : "+x"(qv[g]));                                            \
                    }                                                                         \
                    for (int j = 0; j < 4; j++) {                                             \
                        vf kx = loadv(ks[4 * r + j] + kv * DIM + c * VF_LANES);               \
                        __asm__("" : "+x"(kx));                                               \
                        for (int g = 0; g < GB; g++) part[g][j] += qv[g] * kx;                \
                    }                                                                         \
                }                                                                             \
                for (int g = 0; g < GB; g++) quarter[r][g] = sum_lanes_tree_quarter(part[g]); \
                prefetch_some(&pf);                                                           \
            }                                                                                 \
            vi mask = lane_index < (int32_t)live;                                             \
            for (int g = 0; g < GB; g++)                                                      \
                tile_scores[((h0) + g) * SV + s] =                                            \
                    selectv(mask, sum_lanes_tree_halves(quarter[0][g], quarter[1][g]),        \
                            minus_inf);                                                       \
        }                                                                                     \
    } while (0)
#define SCORE_GROUPS(DIM, NV, kv)                                                             \
    for (long g0 = 0, gb; SHARED_VALUES(G) && g0 < G; g0 += gb) {                             \
        gb = G - g0 == 2 || G - g0 == 4 ? 2 : 3;                                              \
        long h0 = kv * G + g0;                                                                \
        if (gb == 3)                                                                          \
            SCORE_SHARED(DIM, NV, 3, h0);                                                     \
        else                                                                                  \
            SCORE_SHARED(DIM, NV, 2, h0);                                                     \
    }

/* With 2 or more query heads a KV head, the score and output passes take them in blocks of 3
 * (or 2: a group of 4 as 2 + 2, a last pair); one head alone has no loads to share. */
#define SHARED_VALUES(G) ((G) >= 2)
#define OUTPUT_GROUPS(DIM, NV, kv)                                                            \
    for (long g0 = 0, gb; SHARED_VALUES(G) && g0 < G; g0 += gb) {                             \
        gb = G - g0 == 2 || G - g0 == 4 ? 2 : 3;                                              \
        long h0 = kv * G + g0;                                                                \
        if (gb == 3)                                                                          \
            OUTPUT_SHARED(DIM, NV, 3, h0);                                                    \
        else                                                                                  \
            OUTPUT_SHARED(DIM, NV, 2, h0);                                                    \
    }
#endif

/* One task: all Hq query heads of a row (pre-scaled, [Hq][DIM]) against its tokens [t0, t1).
 * Tokens are walked in order and every KV head of a token is used while its cache lines are
 * fresh: each task streams whole token records [Hkv][DIM] front to back. Leaves per query head
 * the running max, the sum of exp(score - max) and the unnormalised output acc [Hq][DIM].
 * A head's DIM floats are NV native vectors, held QB at a time (with 16 lanes all of them). */
#define ATTEND_CHUNK(DIM)                                                                     \
    static void attend_chunk_##DIM(const float *qs, long Hkv, long G, const float *k_cache,   \
                                   const float *v_cache, long block_size,                     \
                                   const int64_t *blocks, long t0, long t1,                   \
                                   softmax_state *state, float *acc) {                        \
        enum { NV = DIM / VF_LANES, QN = NV < QB ? NV : QB };                                 \
        const vi lane_index = LANE_INDEX;                                                     \
        const vf minus_inf = (vf){0} - INFINITY;                                              \
        const float *keys[TILE], *values[TILE];                                               \
        const long token_stride = Hkv * DIM;                                                  \
        const long H = Hkv * G;                                                               \
        /* per head: the running max and sum (VF_LANES spare for the softmax's last vector) */ \
        float maxima[MAX_HEADS + VF_LANES], sums[MAX_HEADS + VF_LANES];                       \
        float corrections[MAX_HEADS + VF_LANES];                                              \
        for (long h = 0; h < MAX_HEADS + VF_LANES; h++) {                                     \
            maxima[h] = -INFINITY;                                                            \
            sums[h] = 0.0f;                                                                   \
        }                                                                                     \
        memset(acc, 0, sizeof(float) * Hkv * G * DIM);                                        \
        /* prefetch points per tile: after each head's score and output passes (between, */  \
        /* not inside, the loops of FMAs) */                                                  \
        const long points = Hkv * (SHARED_VALUES(G) ? (G + 2) / 3 * 2 * SV : G * SV)          \
                            + Hkv * (SHARED_VALUES(G) ? (G + 2) / 3 * (NV < 4 ? 1 : NV / 4) * SV \
                                                      : G * NV / QN);                         \
        prefetcher pf = {.k = k_cache, .v = v_cache, .blocks = blocks,                        \
                         .block_size = block_size, .token_stride = token_stride,              \
                         .token = t0};                                                        \
        /* the first tile's lines at once, before its loads need them (one thread, cold */   \
        /* 32 x 600, 16 x 600, 16 x 2088: 1.02-1.04x; warm the same; Zen 3, 2026-11-30) */     \
        pf.limit = t0 + TILE < t1 ? t0 + TILE : t1;                                           \
        pf.per_point = (pf.limit - t0) * token_stride / 16 + 1;                               \
        prefetch_some(&pf);                                                                   \
        for (long t = t0; t < t1; t += TILE) {                                                \
            long n = t1 - t < TILE ? t1 - t : TILE;                                           \
            for (long j = 0; j < n; j++) {                                                    \
                long pos = t + j;                                                             \
                long offset = (blocks[pos / block_size] * block_size + pos % block_size)      \
                              * token_stride;                                                 \
                keys[j] = k_cache + offset;                                                   \
                values[j] = v_cache + offset;                                                 \
            }                                                                                 \
            for (long j = n; j < TILE; j++) keys[j] = keys[0]; /* scored, then masked */      \
            /* this tile's line pairs still to prefetch, spread over its prefetch points */    \
            pf.limit = t + AHEAD < t1 ? t + AHEAD : t1;                                       \
            long pending = (pf.limit - pf.token) * token_stride + pf.end - pf.pos;            \
            pf.per_point = (pending / 16 + points - 1) / points;                              \
            /* three passes over the heads, each of independent per-head chains */          \
            vf tile_scores[MAX_HEADS * SV];                                                   \
            for (long kv = 0; kv < Hkv; kv++) {                                               \
                SCORE_GROUPS(DIM, NV, kv);                                                    \
                for (long g = 0; g < G * !SHARED_VALUES(G); g++) {                            \
                    long h = kv * G + g;                                                      \
                    for (int s = 0; s < SV; s++) { /* VF_LANES keys at a time */              \
                        vf partial[VF_LANES];                                                 \
                        SCORE_KEYS(DIM, NV, keys + s * VF_LANES, n - s * VF_LANES);           \
                        /* lanes past the tile's last token score -inf, so their probs */    \
                        /* are 0 */                                                           \
                        vi live = lane_index < (int32_t)(n - s * VF_LANES);                   \
                        tile_scores[h * SV + s] =                                             \
                            selectv(live, sum_lanes_tree(partial), minus_inf);                \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            /* the softmax of VF_LANES heads at a time: their maxima in one tree, the */      \
            /* corrections in one exp, the sums in one tree (heads past H: copies, unused) */  \
            for (long h0 = 0; h0 < H; h0 += VF_LANES) {                                       \
                vf top[VF_LANES], total[VF_LANES];                                            \
                for (int i = 0; i < VF_LANES; i++) {                                          \
                    const vf *scores = tile_scores + (h0 + i < H ? h0 + i : H - 1) * SV;      \
                    top[i] = scores[0];                                                       \
                    for (int s = 1; s < SV; s++) top[i] = maxv(top[i], scores[s]);           \
                }                                                                             \
                vf before = loadv(maxima + h0);                                               \
                vf now = maxv(max_lanes_tree(top), before);                                   \
                vf correction = expv_nonpositive(before - now); /* exactly 1 if unchanged */  \
                storev(maxima + h0, now);                                                     \
                storev(corrections + h0, correction);                                         \
                for (int i = 0; i < VF_LANES; i++) {                                          \
                    vf sum = {0};                                                             \
                    vf *scores = tile_scores + (h0 + i) * SV;                                 \
                    for (int s = 0; s < SV && h0 + i < H; s++) {                              \
                        scores[s] = expv_scores(scores[s] - maxima[h0 + i]);                  \
                        sum += scores[s];                                                     \
                    }                                                                         \
                    total[i] = sum;                                                           \
                }                                                                             \
                storev(sums + h0, loadv(sums + h0) * correction + sum_lanes_tree(total));     \
            }                                                                                 \
            for (long kv = 0; kv < Hkv; kv++) {                                               \
                OUTPUT_GROUPS(DIM, NV, kv);                                                   \
                for (long g = 0; g < G * !SHARED_VALUES(G); g++) {                            \
                    long h = kv * G + g;                                                      \
                    const vf *probs = tile_scores + h * SV;                                   \
                    float *a = acc + h * DIM;                                                 \
                    for (int c0 = 0; c0 < NV; c0 += QN) {                                     \
                        vf o[QN];                                                             \
                        for (int c = 0; c < QN; c++)                                          \
                            o[c] = loadv(a + (c0 + c) * VF_LANES) * corrections[h];           \
                        for (long j = 0; j < n; j++)                                          \
                            for (int c = 0; c < QN; c++)                                      \
                                o[c] += probs[j / VF_LANES][j % VF_LANES]                     \
                                        * loadv(values[j] + kv * DIM + (c0 + c) * VF_LANES);  \
                        prefetch_some(&pf);                                                   \
                        for (int c = 0; c < QN; c++) storev(a + (c0 + c) * VF_LANES, o[c]);   \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (long h = 0; h < H; h++) {                                                        \
            state[h].max = maxima[h];                                                         \
            state[h].sum = sums[h];                                                           \
        }                                                                                     \
    }

ATTEND_CHUNK(16)
ATTEND_CHUNK(32)
ATTEND_CHUNK(64)
ATTEND_CHUNK(128)

/* Tokens per task: about four tasks per thread for balance, but at least MIN_TASK_TOKENS, as
 * each task's first tile is read before its prefetch walk is ahead, and at most an even share
 * per thread, so that every thread has work. */
#define MIN_TASK_TOKENS 256
static long auto_chunk(long R, const int64_t *tokens, int threads) {
    long total = 0;
    for (long r = 0; r < R; r++) total += tokens[r];
    long chunk = (total + 4L * threads - 1) / (4L * threads);
    chunk = chunk < MIN_TASK_TOKENS ? MIN_TASK_TOKENS : chunk;
    long even = (total + threads - 1) / threads;
    chunk = chunk < even ? chunk : even;
    chunk = (chunk + TILE - 1) / TILE * TILE;
    return chunk < TILE ? TILE : chunk;
}

typedef void (*attend_chunk_fn)(const float *, long, long, const float *, const float *, long,
                                const int64_t *, long, long, softmax_state *, float *);

/* q [R, Hq, D]; caches [*, block_size, Hkv, D]; row r's blocks are
 * blocks[offsets[r] .. offsets[r + 1]) holding its first tokens[r] tokens.
 * out [R, Hq, D] and lse [R, Hq]. Returns 0, or -1 for unsupported sizes or no memory. */
int parrot_paged_decode(const float *q, long R, long Hq, long Hkv, long D, const float *k_cache,
                        const float *v_cache, long block_size, const int64_t *blocks,
                        const int64_t *offsets, const int64_t *tokens, float scale, long chunk,
                        float *out, float *lse, int threads) {
    const long G = Hq / Hkv;
    attend_chunk_fn attend_chunk = D == 16    ? attend_chunk_16
                                   : D == 32  ? attend_chunk_32
                                   : D == 64  ? attend_chunk_64
                                   : D == 128 ? attend_chunk_128
                                              : 0;
    if (!attend_chunk || Hq > MAX_HEADS || Hq % Hkv || chunk < 0) return -1;
    if (chunk == 0) chunk = auto_chunk(R, tokens, threads);
    /* task first_task[r] + c is chunk c of row r */
    long *first_task = malloc(sizeof(long) * (R + 1));
    if (!first_task) return -1;
    first_task[0] = 0;
    for (long r = 0; r < R; r++)
        first_task[r + 1] = first_task[r] + (tokens[r] + chunk - 1) / chunk;
    const long num_tasks = first_task[R];
    softmax_state *states = malloc(sizeof(softmax_state) * (num_tasks * Hq + 1));
    float *partial = malloc(sizeof(float) * (num_tasks * Hq * D + 1));
    if (!states || !partial) {
        free(first_task);
        free(states);
        free(partial);
        return -1;
    }
#pragma omp parallel num_threads(threads)
    {
        long r = 0;
#pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < num_tasks; t++) {
            while (first_task[r + 1] <= t) r++;
            while (first_task[r] > t) r--;
            long c = t - first_task[r];
            float qs[MAX_HEADS * MAX_DIM];
            const float *qrow = q + r * Hq * D;
            for (long i = 0; i < Hq * D; i++) qs[i] = qrow[i] * scale;
            long t0 = c * chunk, t1 = t0 + chunk < tokens[r] ? t0 + chunk : tokens[r];
            attend_chunk(qs, Hkv, G, k_cache, v_cache, block_size, blocks + offsets[r], t0, t1,
                         states + t * Hq, partial + t * Hq * D);
        }
        /* merge each row's chunks by their maxima */
#pragma omp for schedule(static)
        for (long rh = 0; rh < R * Hq; rh++) {
            long row = rh / Hq, h = rh % Hq;
            long first = first_task[row], chunks = first_task[row + 1] - first;
            float *o = out + rh * D;
            float top = -INFINITY;
            for (long c = 0; c < chunks; c++) {
                float m = states[(first + c) * Hq + h].max;
                top = m > top ? m : top;
            }
            memset(o, 0, sizeof(float) * D);
            if (top == -INFINITY) { /* no keys: an empty part */
                lse[rh] = -INFINITY;
                continue;
            }
            float total = 0.0f;
            for (long c = 0; c < chunks; c++) {
                long t = first + c;
                float w = expf(states[t * Hq + h].max - top);
                total += w * states[t * Hq + h].sum;
                const float *a = partial + (t * Hq + h) * D;
                for (long d = 0; d < D; d++) o[d] += w * a[d];
            }
            float inv = 1.0f / total;
            for (long d = 0; d < D; d++) o[d] *= inv;
            lse[rh] = top + logf(total);
        }
    }
    free(first_task);
    free(states);
    free(partial);
    return 0;
}
