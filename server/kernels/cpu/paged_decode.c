/* Decode attention over a paged KV cache, float32 on CPU: one call for every decode row.
 *
 * Each row (one sequence's single query token) attends its own key span, given as a list of
 * physical blocks and a token count; keys are read in place from the cache
 * [num_blocks, block_size, Hkv, D], never gathered. The Hq / Hkv query heads that share a KV
 * head are computed together, so every key and value vector is loaded once per row.
 *
 * Work is split into tasks of (row, chunk of at most `chunk` tokens; 0: `auto_chunk`) so that
 * a single long row still keeps every core busy; a task walks its tokens in order, all heads at once, keeping an
 * online softmax per head (running max, sum and unnormalised output), and a second pass merges
 * a row's chunks by their maxima. Outputs the
 * normalised attention and its natural-log LSE (empty rows: output 0, LSE -inf), so the caller
 * can merge it with shared-prefix parts.
 *
 * Scores of 16 keys are computed as 16 partial-sum vectors and reduced together by a transpose
 * tree; exp() is a range-reduced degree-7 Taylor polynomial on 16 lanes (relative error below
 * 1e-7 for the arguments used, all <= 0). Head dims 16, 32, 64 and 128 (others: the caller falls back).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define TILE 16
#define PF_PER_KEY 2 /* lines of the tile two ahead prefetched per key scored (1-4 measured) */
#define MAX_HEADS 64
#define MAX_DIM 128

/* [16 vectors of partial sums] -> one vector whose lane j is the sum of vector j's lanes:
 * a transpose-and-add tree, 30 shuffles for 16 dot products instead of 16 serial reductions. */
static inline v16 sum_lanes_16(const v16 p[16]) {
    const v16i h8a = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const v16i h8b = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const v16i h4a = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const v16i h4b = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const v16i h2a = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const v16i h2b = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    const v16i h1a = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const v16i h1b = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    v16 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = __builtin_shuffle(p[2 * i], p[2 * i + 1], h8a)
               + __builtin_shuffle(p[2 * i], p[2 * i + 1], h8b);
    for (int i = 0; i < 4; i++)
        b[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], h4a)
               + __builtin_shuffle(a[2 * i], a[2 * i + 1], h4b);
    for (int i = 0; i < 2; i++)
        c[i] = __builtin_shuffle(b[2 * i], b[2 * i + 1], h2a)
               + __builtin_shuffle(b[2 * i], b[2 * i + 1], h2b);
    return __builtin_shuffle(c[0], c[1], h1a) + __builtin_shuffle(c[0], c[1], h1b);
}

/* the largest lane / the sum of the lanes, by halving */
static inline float max_lane(v16 x) {
    const v16i hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
    const v16i hi4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
    const v16i hi2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
    const v16i hi1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
    v16 y;
    y = __builtin_shuffle(x, hi8); x = select_lanes(x > y, x, y);
    y = __builtin_shuffle(x, hi4); x = select_lanes(x > y, x, y);
    y = __builtin_shuffle(x, hi2); x = select_lanes(x > y, x, y);
    y = __builtin_shuffle(x, hi1); x = select_lanes(x > y, x, y);
    return x[0];
}

static inline float sum_lane(v16 x) {
    const v16i hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
    const v16i hi4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
    const v16i hi2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
    const v16i hi1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
    x += __builtin_shuffle(x, hi8);
    x += __builtin_shuffle(x, hi4);
    x += __builtin_shuffle(x, hi2);
    x += __builtin_shuffle(x, hi1);
    return x[0];
}

typedef struct {
    float max, sum;
} softmax_state;

/* cache lines of up to TILE token records still to prefetch (k and v side by side) */
typedef struct {
    const float *k[TILE], *v[TILE];
    long count, token, line, lines;
} prefetcher;

static inline void prefetch_some(prefetcher *p, int n) {
    for (; n > 0 && p->token < p->count; n--) {
        __builtin_prefetch(p->k[p->token] + p->line * 16, 0, 1);
        __builtin_prefetch(p->v[p->token] + p->line * 16, 0, 1);
        if (++p->line == p->lines) {
            p->line = 0;
            p->token++;
        }
    }
}

/* One task: all Hq query heads of a row (pre-scaled, [Hq][DIM]) against its tokens [t0, t1).
 * Tokens are walked in order and every KV head of a token is used while its cache lines are
 * fresh: each task streams whole token records [Hkv][DIM] front to back. Leaves per query head
 * the running max, the sum of exp(score - max) and the unnormalised output acc [Hq][DIM]. */
#define ATTEND_CHUNK(DIM)                                                                     \
    static void attend_chunk_##DIM(const float *qs, long Hkv, long G, const float *k_cache,   \
                                   const float *v_cache, long block_size,                     \
                                   const int64_t *blocks, long t0, long t1,                   \
                                   softmax_state *state, float *acc) {                        \
        enum { NV = DIM / 16 };                                                               \
        const v16i lane_index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};       \
        const v16 minus_inf = (v16){0} - INFINITY;                                            \
        const float *keys[TILE], *values[TILE];                                              \
        const long token_stride = Hkv * DIM;                                                  \
        for (long h = 0; h < Hkv * G; h++) {                                                  \
            state[h].max = -INFINITY;                                                         \
            state[h].sum = 0.0f;                                                              \
        }                                                                                     \
        memset(acc, 0, sizeof(float) * Hkv * G * DIM);                                        \
        for (long t = t0; t < t1; t += TILE) {                                                \
            long n = t1 - t < TILE ? t1 - t : TILE;                                           \
            v16i live = lane_index < (int32_t)n;                                              \
            for (long j = 0; j < n; j++) {                                                    \
                long pos = t + j;                                                             \
                long offset = (blocks[pos / block_size] * block_size + pos % block_size)      \
                              * token_stride;                                                 \
                keys[j] = k_cache + offset;                                                   \
                values[j] = v_cache + offset;                                                 \
            }                                                                                 \
            /* records two tiles ahead, prefetched a few lines at a time during the score  */ \
            /* pass: a burst of hundreds would stall the core until memory served them */      \
            prefetcher pf = {.lines = token_stride / 16};                                     \
            for (long j = 0; j < TILE && t + 2 * TILE + j < t1; j++) {                        \
                long pos = t + 2 * TILE + j;                                                   \
                long off = (blocks[pos / block_size] * block_size + pos % block_size)         \
                           * token_stride;                                                    \
                pf.k[j] = k_cache + off;                                                      \
                pf.v[j] = v_cache + off;                                                      \
                pf.count = j + 1;                                                             \
            }                                                                                 \
            /* three passes over the heads, each of independent per-head chains */          \
            v16 tile_scores[MAX_HEADS];                                                       \
            float corrections[MAX_HEADS];                                                     \
            for (long kv = 0; kv < Hkv; kv++) {                                               \
                for (long g = 0; g < G; g++) {                                                \
                    long h = kv * G + g;                                                      \
                    v16 q[NV], partial[TILE];                                                 \
                    for (int c = 0; c < NV; c++) q[c] = load(qs + h * DIM + c * 16);          \
                    for (long j = 0; j < TILE; j++) {                                         \
                        v16 s = {0};                                                          \
                        if (j < n)                                                            \
                            for (int c = 0; c < NV; c++)                                      \
                                s += q[c] * load(keys[j] + kv * DIM + c * 16);                \
                        partial[j] = s;                                                       \
                        prefetch_some(&pf, PF_PER_KEY);                                       \
                    }                                                                         \
                    /* lanes past the tile's last token score -inf, so their probs are 0 */   \
                    tile_scores[h] = select_lanes(live, sum_lanes_16(partial), minus_inf);    \
                }                                                                             \
            }                                                                                 \
            for (long h = 0; h < Hkv * G; h++) {                                              \
                float tile_max = max_lane(tile_scores[h]);                                    \
                tile_max = tile_max > state[h].max ? tile_max : state[h].max;                 \
                v16 probs = exp_nonpositive(tile_scores[h] - tile_max);                       \
                /* rescale what was accumulated under the old maximum; the maximum seldom */ \
                /* rises after the first tiles: skip expf(0) */                               \
                float correction = state[h].max == tile_max    ? 1.0f                         \
                                   : state[h].max == -INFINITY ? 0.0f                         \
                                                               : expf(state[h].max - tile_max); \
                state[h].sum = state[h].sum * correction + sum_lane(probs);                   \
                state[h].max = tile_max;                                                      \
                tile_scores[h] = probs;                                                       \
                corrections[h] = correction;                                                  \
            }                                                                                 \
            for (long kv = 0; kv < Hkv; kv++) {                                               \
                for (long g = 0; g < G; g++) {                                                \
                    long h = kv * G + g;                                                      \
                    v16 o[NV], probs = tile_scores[h];                                        \
                    float *a = acc + h * DIM;                                                 \
                    for (int c = 0; c < NV; c++) o[c] = load(a + c * 16) * corrections[h];    \
                    for (long j = 0; j < n; j++)                                              \
                        for (int c = 0; c < NV; c++)                                          \
                            o[c] += probs[j] * load(values[j] + kv * DIM + c * 16);           \
                    for (int c = 0; c < NV; c++) *(v16u *)(a + c * 16) = o[c];                \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

ATTEND_CHUNK(16)
ATTEND_CHUNK(32)
ATTEND_CHUNK(64)
ATTEND_CHUNK(128)

/* Tokens per task: about four tasks per thread for balance, but at least MIN_TASK_TOKENS, as
 * each task starts with its first tiles unprefetched, and at most an even share per thread, so
 * that every thread has work. */
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
