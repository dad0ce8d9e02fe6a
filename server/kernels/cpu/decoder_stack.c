/* Every decoder layer of a Llama-family model for one engine step, float32 on CPU, in one call.
 *
 * At batch 1 the weights stream in ~12 ms, yet a step driven layer by layer from Python took
 * ~19 ms: some 450 small torch ops (norms, RoPE, cache writes, SiLU, residual adds) and the
 * Python around them cost 5-7 ms. Here a layer is
 *
 *   x += o_proj(attention(rope(qkv_proj(rms_norm(x)))))          (new K/V written to the cache)
 *   x += down_proj(silu(gate) * up),  [gate | up] = gate_up_proj(rms_norm(x))
 *
 * with the linear layers on the packed kernel (packed_linear.c) and attention on the paged
 * kernels, all built into this library: the decode kernel (paged_decode.c) for sequences that
 * add one token, the prefill kernel (paged_prefill.c) for the others, and the levels kernel
 * (paged_levels.c) for shared-prefix levels among the decodes: a level's span is read once for
 * all its members, whose own keys then start where their deepest level ends.
 * The small element-wise parts run on the calling thread at decode sizes, and are split over
 * the threads from `PARALLEL_ELEMENTS` up.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define PARALLEL_ELEMENTS 32768

/* Built with -DPARROT_STACK_TIMERS (benchmarks/step_phases.py), the stack adds the wall time of
 * each phase of its steps to `parrot_stack_phases()`, which the caller reads and zeroes; one
 * set of counters per library, so time one engine at a time. Without it the marks vanish. */
enum { PHASE_ELEMENTWISE, PHASE_QKV, PHASE_ATTENTION, PHASE_O, PHASE_GATE_UP, PHASE_DOWN,
       PHASE_HEAD, PHASES };
#ifdef PARROT_STACK_TIMERS
static double phase_seconds[PHASES];
double *parrot_stack_phases(void) { return phase_seconds; }
#define PHASE_START() double phase_mark = omp_get_wtime()
#define PHASE_END(p)                                                                          \
    do {                                                                                      \
        double phase_now = omp_get_wtime();                                                   \
        phase_seconds[p] += phase_now - phase_mark;                                           \
        phase_mark = phase_now;                                                               \
    } while (0)
#else
#define PHASE_START() ((void)0)
#define PHASE_END(p) ((void)0)
#endif

/* the public functions of packed_linear.c, q4_linear.c and the attention kernels */
void parrot_packed_linear(const float *x, long M, long K, const float *panels, long N,
                          const float *bias, float *y, int threads);
void parrot_q4_linear(const float *x, long M, long K, const uint8_t *qs, const float *scales,
                      const float *mins, long N, const float *bias, float *y, int threads);
void parrot_q8_linear(const float *x, long M, long K, const int8_t *qs, const float *scales,
                      const float *mins, long block, long N, const float *bias, float *y,
                      int threads);
int parrot_paged_decode(const float *q, long R, long Hq, long Hkv, long D, const float *k_cache,
                        const float *v_cache, long block_size, const int64_t *blocks,
                        const int64_t *offsets, const int64_t *tokens, float scale, long chunk,
                        float *out, float *lse, int threads);
int parrot_paged_prefill(const float *q, long S, const int64_t *first_row, const int64_t *rows,
                         const int64_t *tokens, long Hq, long Hkv, long D, const float *k_cache,
                         const float *v_cache, long block_size, const int64_t *blocks,
                         const int64_t *first_block, float scale, float *out, int threads);
int parrot_paged_levels(const float *q, long Hq, long Hkv, long D, const float *k_cache,
                        const float *v_cache, long block_size, long L,
                        const int64_t *member_offsets, const int64_t *rows,
                        const int64_t *block_offsets, const int64_t *blocks,
                        const int64_t *tokens, float scale, float *out, float *lse,
                        int threads);

/* A projection's weight 4-bit (q4_linear.c's panels: qs, scales, mins) or 8-bit (q8_linear.c's:
 * q8, q8_scales, a scale per q8_block k's, q8_mins or NULL), or all NULL; or split, both set:
 * the first q4_columns outputs (a multiple of 16) 4-bit and the rest 8-bit, as a GGUF mixed like
 * Q4_K_M has a fused q/k/v whose q and k are Q4_K and v Q6_K. */
typedef struct {
    const uint8_t *qs;
    const float *scales, *mins;
    const int8_t *q8;
    const float *q8_scales, *q8_mins;
    long q8_block;
    long q4_columns;
} parrot_q4;

/* One layer's parameters: norms [hidden]; packed panels of qkv [hidden -> (Hq + 2 Hkv) D],
 * o [Hq D -> hidden], gate_up [hidden -> 2 I] and down [I -> hidden]; biases or NULL; the
 * same projections 4- or 8-bit where the model has them (else NULL). */
typedef struct {
    const float *input_norm, *post_norm;
    const float *qkv, *qkv_bias, *o, *o_bias, *gate_up, *gate_up_bias, *down, *down_bias;
    parrot_q4 qkv_q4, o_q4, gate_up_q4, down_q4;
} parrot_layer;

/* Steps of up to quantized_max_rows rows use the layers' quantized weights where there are,
 * and heads over up to head_quantized_max_rows rows the head's. */
typedef struct {
    long hidden, heads, kv_heads, head_dim, intermediate;
    float eps, scale;
    const float *cos, *sin; /* RoPE tables [positions, head_dim / 2] */
    long quantized_max_rows, head_quantized_max_rows;
} parrot_stack_shape;

/* The step's rows: positions [R] and cache slots [R] of the new tokens. Sequence s owns rows
 * [q_start[s], q_start[s + 1]), the last of its tokens[s] tokens, held by the blocks
 * blocks[offsets[s] .. offsets[s + 1]) of each layer's caches [blocks, block_size, Hkv, D].
 * Per call: engines that share one model's weights have caches of their own.
 * Shared-prefix levels (levels > 0): level l's members are the decoding sequences
 * level_seqs[level_member_offsets[l] ..], its span the first level_tokens[l] tokens of
 * level_blocks[level_block_offsets[l] ..]; a member's first skip[s] tokens (a block multiple)
 * lie in its levels, so its own keys start there. */
typedef struct {
    long rows, seqs;
    const int64_t *positions, *slots, *q_start, *tokens, *blocks, *offsets;
    long block_size;
    float *const *k_caches, *const *v_caches; /* one per layer */
    long levels;
    const int64_t *level_member_offsets, *level_seqs, *level_block_offsets, *level_blocks,
        *level_tokens, *skip;
} parrot_step_rows;

/* The final norm and the LM head over the rows that sample: logits [count, vocab] of the rows
 * rows[0 .. count), with the head packed into panels [ceil(vocab / 16)][hidden][16], and 8-bit
 * (q8_linear.c's panels; NULL without) for up to the shape's head_quantized_max_rows rows. Done in
 * the same call so that a step does not pay for leaving C and coming back with the caches
 * cold (a torch op right after the stack took 120-220 us instead of 10-20). */
typedef struct {
    const float *norm, *panels;
    long vocab, count;
    const int64_t *rows;
    float *logits;
    const int8_t *q8;
    const float *q8_scales, *q8_mins;
    long q8_block;
} parrot_logits_head;

/* The step's sequences by attention kernel: one-row sequences (decodes) and the rest. */
typedef struct {
    long decodes, prefills;
    int64_t *decode_row, *decode_offsets, *decode_tokens, *decode_blocks;
    int64_t *first_row, *rows, *tokens, *first_block;
    int64_t *level_rows; /* the levels' members as decode indices */
    int64_t *memory;
} step_split;

static int split_step(const parrot_step_rows *b, step_split *split);
static int has_split_layer(const parrot_layer *layers, long n);
static int attend(const float *q, const parrot_stack_shape *s, const float *k_cache,
                  const float *v_cache, const parrot_step_rows *b, const step_split *split,
                  float *scratch, float *lse, float *attn, int threads);
static void rms_norm(const float *x, const float *weight, float eps, long rows, long n,
                     float *out, int threads);
static void rope_and_store(const float *qkv, const parrot_stack_shape *s, float *k_cache,
                           float *v_cache, const parrot_step_rows *b, float *q, int threads);
static void silu_mul(const float *gate_up, long rows, long n, float *out, int threads);
static void add_into(float *x, const float *y, long n, int threads);
static void linear(const float *x, long R, long K, const float *panels, const parrot_q4 *q4,
                   long N, const float *bias, float *y, long quantized_max_rows, float *split,
                   int threads);

/* x [R, hidden] (the residual stream, updated in place) through layers[first .. num_layers),
 * then the logits of `head` unless it is NULL. With `stop` (may be NULL), a flag that another
 * thread sets, the call returns early at the first layer boundary after it finds the flag set,
 * having run at least one layer: x then holds the stream after the layers done, and calling
 * again from the layer returned goes on as if never stopped (each layer writes only its own
 * cache and x). Returns 0 when every layer (and the head) ran, the next layer's index when
 * stopped, or -1 when memory runs out or the attention kernel refuses the head layout. */
int parrot_decoder_stack(float *x, const parrot_stack_shape *s, const parrot_layer *layers,
                         long first, long num_layers, const parrot_step_rows *b,
                         const parrot_logits_head *head, const volatile int *stop,
                         int threads) {
    const long R = b->rows, H = s->hidden, I = s->intermediate, quant_rows = s->quantized_max_rows;
    const long q_size = s->heads * s->head_dim;
    const long qkv_size = q_size + 2 * s->kv_heads * s->head_dim;
    long wide = qkv_size > 2 * I ? qkv_size : 2 * I;
    wide = wide > 2 * q_size ? wide : 2 * q_size; /* also the decode rows' gather space */
    float *normed = malloc(sizeof(float) * R * (H > I ? H : I));
    float *proj = malloc(sizeof(float) * R * wide);
    float *q = malloc(sizeof(float) * R * q_size);
    float *attn = malloc(sizeof(float) * R * q_size);
    float *lse = malloc(sizeof(float) * R * s->heads);
    float *delta = malloc(sizeof(float) * R * H);
    /* a split projection's two parts land here before they are interleaved into its output:
     * allocated only for steps that read a split layer's quantized panels */
    const int splits = R <= quant_rows && has_split_layer(layers + first, num_layers - first);
    float *parts = splits ? malloc(sizeof(float) * R * (wide > H ? wide : H)) : NULL;
    step_split split;
    int status = split_step(b, &split);
    if (!(normed && proj && q && attn && lse && delta && (parts || !splits))) status = -1;
    PHASE_START();
    long i = first;
    for (; i < num_layers && status == 0; i++) {
        if (stop && *stop && i > first) break; /* a latency-critical step waits for this one */
        const parrot_layer *l = layers + i;
        rms_norm(x, l->input_norm, s->eps, R, H, normed, threads);
        PHASE_END(PHASE_ELEMENTWISE);
        linear(normed, R, H, l->qkv, &l->qkv_q4, qkv_size, l->qkv_bias, proj, quant_rows, parts,
               threads);
        PHASE_END(PHASE_QKV);
        rope_and_store(proj, s, b->k_caches[i], b->v_caches[i], b, q, threads);
        PHASE_END(PHASE_ELEMENTWISE);
        /* proj is free until gate_up: scratch for gathered decode rows */
        status = attend(q, s, b->k_caches[i], b->v_caches[i], b, &split, proj, lse, attn,
                        threads);
        PHASE_END(PHASE_ATTENTION);
        linear(attn, R, q_size, l->o, &l->o_q4, H, l->o_bias, delta, quant_rows, parts, threads);
        PHASE_END(PHASE_O);
        add_into(x, delta, R * H, threads);
        rms_norm(x, l->post_norm, s->eps, R, H, normed, threads);
        PHASE_END(PHASE_ELEMENTWISE);
        linear(normed, R, H, l->gate_up, &l->gate_up_q4, 2 * I, l->gate_up_bias, proj, quant_rows,
               parts, threads);
        PHASE_END(PHASE_GATE_UP);
        silu_mul(proj, R, I, normed, threads);
        PHASE_END(PHASE_ELEMENTWISE);
        linear(normed, R, I, l->down, &l->down_q4, H, l->down_bias, delta, quant_rows, parts,
               threads);
        PHASE_END(PHASE_DOWN);
        add_into(x, delta, R * H, threads);
        PHASE_END(PHASE_ELEMENTWISE);
    }
    const long stopped_at = status == 0 && i < num_layers ? i : 0;
    if (head && status == 0 && !stopped_at) {
        /* normed holds R x max(H, I) floats and count <= R */
        for (long j = 0; j < head->count; j++)
            rms_norm(x + head->rows[j] * H, head->norm, s->eps, 1, H, normed + j * H, 1);
        if (head->q8 && head->count <= s->head_quantized_max_rows)
            parrot_q8_linear(normed, head->count, H, head->q8, head->q8_scales, head->q8_mins,
                             head->q8_block, head->vocab, NULL, head->logits, threads);
        else
            parrot_packed_linear(normed, head->count, H, head->panels, head->vocab, NULL,
                                 head->logits, threads);
        PHASE_END(PHASE_HEAD);
    }
    free(split.memory);
    free(normed);
    free(proj);
    free(q);
    free(attn);
    free(lse);
    free(delta);
    free(parts);
    return status ? status : (int)stopped_at;
}

/* Decode rows go to the decode kernel, gathered into `scratch` (2 R Hq D floats) when other
 * rows sit between them; every other sequence goes to the prefill kernel. */
static int attend(const float *q, const parrot_stack_shape *s, const float *k_cache,
                  const float *v_cache, const parrot_step_rows *b, const step_split *split,
                  float *scratch, float *lse, float *attn, int threads) {
    const long width = s->heads * s->head_dim, n = split->decodes;
    int status = 0;
    if (n) {
        const int gather = n < b->rows;
        const float *q_rows = gather ? scratch : q;
        float *out_rows = gather ? scratch + n * width : attn;
        for (long k = 0; gather && k < n; k++)
            memcpy(scratch + k * width, q + split->decode_row[k] * width, sizeof(float) * width);
        status = parrot_paged_decode(q_rows, n, s->heads, s->kv_heads, s->head_dim, k_cache,
                                     v_cache, b->block_size, split->decode_blocks,
                                     split->decode_offsets, split->decode_tokens, s->scale, 0,
                                     out_rows, lse, threads);
        if (b->levels && status == 0)
            status = parrot_paged_levels(q_rows, s->heads, s->kv_heads, s->head_dim, k_cache,
                                         v_cache, b->block_size, b->levels,
                                         b->level_member_offsets, split->level_rows,
                                         b->level_block_offsets, b->level_blocks,
                                         b->level_tokens, s->scale, out_rows, lse, threads);
        for (long k = 0; gather && k < n; k++)
            memcpy(attn + split->decode_row[k] * width, out_rows + k * width,
                   sizeof(float) * width);
    }
    if (split->prefills && status == 0)
        status = parrot_paged_prefill(q, split->prefills, split->first_row, split->rows,
                                      split->tokens, s->heads, s->kv_heads, s->head_dim,
                                      k_cache, v_cache, b->block_size, b->blocks,
                                      split->first_block, s->scale, attn, threads);
    return status;
}

/* whether any of the n layers has a projection split between 4- and 8-bit panels */
static int has_split_layer(const parrot_layer *layers, long n) {
    for (long i = 0; i < n; i++) {
        const parrot_q4 *p[] = {&layers[i].qkv_q4, &layers[i].o_q4, &layers[i].gate_up_q4,
                                &layers[i].down_q4};
        for (int j = 0; j < 4; j++)
            if (p[j]->qs && p[j]->q8) return 1;
    }
    return 0;
}

static int split_step(const parrot_step_rows *b, step_split *split) {
    const long S = b->seqs;
    const long members = b->levels ? b->level_member_offsets[b->levels] : 0;
    long decode_blocks = 0;
    memset(split, 0, sizeof(*split));
    for (long i = 0; i < S; i++)
        if (b->q_start[i + 1] - b->q_start[i] == 1)
            decode_blocks += b->offsets[i + 1] - b->offsets[i];
    split->memory = malloc(sizeof(int64_t) * (9 * S + 1 + members + decode_blocks + 1));
    if (!split->memory) return -1;
    int64_t *m = split->memory;
    int64_t *decode_of_seq = m;
    m += S;
    split->level_rows = m, m += members;
    split->decode_row = m, m += S;
    split->decode_offsets = m, m += S + 1;
    split->decode_tokens = m, m += S;
    split->first_row = m, m += S;
    split->rows = m, m += S;
    split->tokens = m, m += S;
    split->first_block = m, m += S;
    split->decode_blocks = m;
    split->decode_offsets[0] = 0;
    for (long i = 0; i < S; i++) {
        long rows = b->q_start[i + 1] - b->q_start[i];
        if (rows == 1) {
            long skip = b->levels ? b->skip[i] : 0, first = b->offsets[i] + skip / b->block_size;
            long k = split->decodes++, used = b->offsets[i + 1] - first;
            decode_of_seq[i] = k;
            split->decode_row[k] = b->q_start[i];
            split->decode_tokens[k] = b->tokens[i] - skip;
            memcpy(split->decode_blocks + split->decode_offsets[k], b->blocks + first,
                   sizeof(int64_t) * used);
            split->decode_offsets[k + 1] = split->decode_offsets[k] + used;
        } else if (rows > 1) {
            long k = split->prefills++;
            split->first_row[k] = b->q_start[i];
            split->rows[k] = rows;
            split->tokens[k] = b->tokens[i];
            split->first_block[k] = b->offsets[i];
        }
    }
    for (long j = 0; j < members; j++) split->level_rows[j] = decode_of_seq[b->level_seqs[j]];
    return 0;
}

/* out = x / sqrt(mean(x^2) + eps) * weight, row by row */
static void rms_norm(const float *x, const float *weight, float eps, long rows, long n,
                     float *out, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * n >= PARALLEL_ELEMENTS)
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (long i = 0; i < n; i++) squares += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(squares / (float)n + eps);
#pragma omp simd
        for (long i = 0; i < n; i++) o[i] = xr[i] * inv * weight[i];
    }
}

/* Rotates the q and k heads of each row's qkv ("rotate half": dim i pairs with i + D/2) by its
 * position; q goes to `q` [R, Hq, D], k and v straight into the layer's cache at the row's slot. */
static void rope_and_store(const float *qkv, const parrot_stack_shape *s, float *k_cache,
                           float *v_cache, const parrot_step_rows *b, float *q, int threads) {
    const long D = s->head_dim, half = D / 2, Hq = s->heads, Hkv = s->kv_heads;
    const long qkv_size = (Hq + 2 * Hkv) * D;
#pragma omp parallel for num_threads(threads) if (b->rows * qkv_size >= PARALLEL_ELEMENTS)
    for (long r = 0; r < b->rows; r++) {
        const float *row = qkv + r * qkv_size;
        const float *c = s->cos + b->positions[r] * half, *sn = s->sin + b->positions[r] * half;
        float *k_out = k_cache + b->slots[r] * Hkv * D;
        for (long h = 0; h < Hq + Hkv; h++) {
            const float *in = row + h * D;
            float *o = h < Hq ? q + (r * Hq + h) * D : k_out + (h - Hq) * D;
#pragma omp simd
            for (long i = 0; i < half; i++) {
                o[i] = in[i] * c[i] - in[i + half] * sn[i];
                o[i + half] = in[i + half] * c[i] + in[i] * sn[i];
            }
        }
        memcpy(v_cache + b->slots[r] * Hkv * D, row + (Hq + Hkv) * D, sizeof(float) * Hkv * D);
    }
}

/* out [R, n] = silu(gate) * up for gate_up [R, 2n] = [gate | up];
 * silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) so the exponent never overflows. */
static void silu_mul(const float *gate_up, long rows, long n, float *out, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * n >= PARALLEL_ELEMENTS)
    for (long r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * n, *up = gate + n;
        float *o = out + r * n;
        long i = 0;
        for (; i + VF_LANES <= n; i += VF_LANES) {
            vf g = loadv(gate + i);
            vi positive = g >= 0.0f;
            vf e = expv_nonpositive(selectv(positive, -g, g));
            vf sigmoid = selectv(positive, 1.0f / (1.0f + e), e / (1.0f + e));
            storev(o + i, g * sigmoid * loadv(up + i));
        }
        for (; i < n; i++) o[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}

static void add_into(float *x, const float *y, long n, int threads) {
#pragma omp parallel for simd num_threads(threads) if (n >= PARALLEL_ELEMENTS)
    for (long i = 0; i < n; i++) x[i] += y[i];
}

/* y = x @ W (+ bias): the 4- or 8-bit weights for steps of few rows (they stream ~5x or ~3.5x
 * fewer bytes), else the float32 panels. A split weight's parts go through `parts` (R x N
 * floats): each kernel writes rows of its own width. */
static void linear(const float *x, long R, long K, const float *panels, const parrot_q4 *q4,
                   long N, const float *bias, float *y, long quantized_max_rows, float *parts,
                   int threads) {
    if (q4->qs && q4->q8 && R <= quantized_max_rows) {
        const long n4 = q4->q4_columns, n8 = N - n4;
        float *y4 = parts, *y8 = parts + R * n4;
        parrot_q4_linear(x, R, K, q4->qs, q4->scales, q4->mins, n4, bias, y4, threads);
        parrot_q8_linear(x, R, K, q4->q8, q4->q8_scales, q4->q8_mins, q4->q8_block, n8,
                         bias ? bias + n4 : NULL, y8, threads);
        for (long r = 0; r < R; r++) {
            memcpy(y + r * N, y4 + r * n4, sizeof(float) * n4);
            memcpy(y + r * N + n4, y8 + r * n8, sizeof(float) * n8);
        }
    } else if (q4->qs && R <= quantized_max_rows)
        parrot_q4_linear(x, R, K, q4->qs, q4->scales, q4->mins, N, bias, y, threads);
    else if (q4->q8 && R <= quantized_max_rows)
        parrot_q8_linear(x, R, K, q4->q8, q4->q8_scales, q4->q8_mins, q4->q8_block, N, bias, y,
                         threads);
    else
        parrot_packed_linear(x, R, K, panels, N, bias, y, threads);
}
