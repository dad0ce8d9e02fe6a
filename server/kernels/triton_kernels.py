"""Triton kernels: paged attention over a work list, and the LSE merge of its parts.

`paged_attention_kernel`: one program per (work item, kv head). A work item is a tile of query
tokens of one task (a prefill chunk, a shared-prefix level's stacked decode queries, or one
decode's own suffix) and a range of that task's KV tokens, read in place through the task's
block ids. The GQA heads of a kv head are folded into the tile's rows, so each KV tile is
loaded once for all of them. Writes the tile's softmax output and natural-log LSE to its part
rows. `merge_kernel`: one program per (query token, head), combines that token's part rows.
`store_kv_kernel`: the step's new K and V rows into the paged caches.
"""

from __future__ import annotations

import triton
import triton.language as tl

# A work item is ITEM_FIELDS int32s: offset of its first query token in ROWS, query tokens,
# offset of its task's block ids in BLOCKS, KV token range [lo, hi) within the task, position
# of its first query token (NOT_CAUSAL: sees every key), first part row it writes, padding.
ITEM_FIELDS = 8
NOT_CAUSAL = 1 << 30
LOG2E = 1.4426950408889634


@triton.jit
def paged_attention_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    ITEMS,
    ROWS,
    BLOCKS,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_ot,
    stride_oh,
    stride_lt,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    item = ITEMS + tl.program_id(0) * 8  # ITEM_FIELDS
    kv_head = tl.program_id(1)
    q_off = tl.load(item + 0)
    q_count = tl.load(item + 1)
    block_off = tl.load(item + 2)
    kv_lo = tl.load(item + 3)
    kv_hi = tl.load(item + 4)
    q_pos0 = tl.load(item + 5)
    dest = tl.load(item + 6)

    rows = tl.arange(0, BLOCK_M)
    token = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (token < q_count) & (token < BLOCK_M // GROUP)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    q_row = tl.load(ROWS + q_off + token, mask=row_ok, other=0).to(tl.int64)
    q = tl.load(
        Q + q_row[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    last_visible = q_pos0 + token  # causal: query at q_pos0 + token sees keys up to there
    hi = tl.minimum(kv_hi, q_pos0 + q_count)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(kv_lo, hi, BLOCK_N):
        keys_at = start + tl.arange(0, BLOCK_N)
        key_ok = keys_at < hi
        block = tl.load(BLOCKS + block_off + keys_at // PAGE, mask=key_ok, other=0).to(tl.int64)
        kv_off = block * stride_kb + (keys_at % PAGE) * stride_ks + kv_head * stride_kh
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(K + kv_off[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        visible = key_ok[None, :] & (keys_at[None, :] <= last_visible[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv_off[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(
        has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453, float("-inf")
    )
    out_row = (dest + token).to(tl.int64)
    tl.store(
        Out + out_row[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
        out,
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    tl.store(LSE + out_row * stride_lt + head, lse, mask=row_ok)


@triton.jit
def merge_kernel(
    O_PARTS,
    LSE_PARTS,
    TABLE,
    OUT,
    num_parts,
    stride_pt,
    stride_ph,
    stride_lt,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per (query token, head): all of its parts are loaded at once (a merge is
    latency-bound; a loop over parts would wait for each load in turn)."""
    token = tl.program_id(0)
    head = tl.program_id(1)
    slots = tl.arange(0, BLOCK_P)
    dims = tl.arange(0, BLOCK_D)
    part = tl.load(TABLE + token * num_parts + slots, mask=slots < num_parts, other=-1)
    present = part >= 0
    row = tl.where(present, part, 0).to(tl.int64)
    lse = tl.load(LSE_PARTS + row * stride_lt + head, mask=present, other=float("-inf"))
    o = tl.load(
        O_PARTS + row[:, None] * stride_pt + head * stride_ph + dims[None, :],
        mask=present[:, None] & (dims < HEAD_DIM)[None, :],
        other=0.0,
    )
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m_safe)  # 0 for absent or empty parts
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(
        OUT + token * stride_ot + head * stride_oh + dims,
        out.to(OUT.dtype.element_ty),
        mask=dims < HEAD_DIM,
    )


@triton.jit
def store_kv_kernel(
    K,
    V,
    K_CACHE,
    V_CACHE,
    SLOTS,
    stride_kt,
    stride_vt,
    ROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Row t of k and of v ([T, Hkv * D] each) to cache slot SLOTS[t]: both caches in one
    launch (a decode step's cache write is launch-bound)."""
    token = tl.program_id(0)
    slot = tl.load(SLOTS + token).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < ROW
    k = tl.load(K + token * stride_kt + cols, mask=ok)
    v = tl.load(V + token * stride_vt + cols, mask=ok)
    tl.store(K_CACHE + slot * ROW + cols, k, mask=ok)
    tl.store(V_CACHE + slot * ROW + cols, v, mask=ok)
