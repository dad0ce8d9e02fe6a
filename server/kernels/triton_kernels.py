"""Triton kernels: paged attention over a work list, and the LSE merge of its parts.

`paged_attention_kernel`: one program per (work item, kv head). A work item is a tile of query
tokens of one task (a prefill chunk, a shared-prefix level's stacked decode queries, or one
decode's own suffix) and a range of that task's KV tokens, read in place through the task's
block ids. The GQA heads of a kv head are folded into the tile's rows, so each KV tile is
loaded once for all of them. Writes the tile's softmax output and natural-log LSE to its part
rows. `merge_kernel`: one program per (query token, head), combines that token's part rows.
`store_kv_kernel`: the step's new K and V rows into the paged caches.

Fused (`FUSED`), a decode step is one launch per tile height instead of three: a token with one
part writes its final output at once; otherwise each program counts its parts in with an atomic
per (token, head), and the program that brings a token's count to its number of parts merges
that token's parts into the output and resets the count. With `STORE_KV`, the program whose
item ends at a decode's newest key (item field 7 set) takes that key from the step's K/V rather
than from the cache (nothing reads it from there this step) and writes it to the cache.
"""

from __future__ import annotations

import triton
import triton.language as tl

# A work item is ITEM_FIELDS int32s: offset of its first query token in ROWS, query tokens,
# offset of its task's block ids in BLOCKS, KV token range [lo, hi) within the task, position
# of its first query token (NOT_CAUSAL: sees every key), first part row it writes, and 1 if the
# item's last key is its single query token's new key (STORE_KV), else 0.
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
    K_NEW,
    V_NEW,
    stride_nt,
    stride_nh,
    FINAL,
    stride_ft,
    stride_fh,
    PARTS_OF,
    MERGE_TABLE,
    num_parts,
    COUNTS,
    num_q_heads,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    FUSED: tl.constexpr,
    STORE_KV: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """See the module docstring; K_NEW .. BLOCK_P are used only when FUSED (K_NEW and V_NEW,
    the step's [T, Hkv, D] rows sharing strides, only with STORE_KV)."""
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
    if STORE_KV:
        new_key = tl.load(item + 7) != 0
        hi = tl.where(new_key, hi - 1, hi)  # the newest key comes from K_NEW, after the loop

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

    if STORE_KV:
        if new_key:
            # a decode's own newest key: every query row of the item sees it (one token)
            new_row = tl.load(ROWS + q_off).to(tl.int64) * stride_nt + kv_head * stride_nh
            k_new = tl.load(K_NEW + new_row + dims, mask=dim_ok, other=0.0)
            v_new = tl.load(V_NEW + new_row + dims, mask=dim_ok, other=0.0)
            s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * scale_log2
            m_new = tl.maximum(m_i, s_new)
            p_new = tl.exp2(s_new - m_new)
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + p_new
            acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
            m_i = m_new
            slot_block = tl.load(BLOCKS + block_off + hi // PAGE).to(tl.int64)
            slot = slot_block * stride_kb + (hi % PAGE) * stride_ks + kv_head * stride_kh
            tl.store(K + slot + dims, k_new, mask=dim_ok)
            tl.store(V + slot + dims, v_new, mask=dim_ok)

    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(
        has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453, float("-inf")
    )
    out_row = (dest + token).to(tl.int64)
    if FUSED:
        parts = tl.load(PARTS_OF + q_row, mask=row_ok, other=1)
        final = q_row[:, None] * stride_ft + head[:, None] * stride_fh + dims[None, :]
        # a token with one part: this is its output
        tl.store(
            FINAL + final,
            out.to(FINAL.dtype.element_ty),
            mask=(row_ok & (parts == 1))[:, None] & dim_ok[None, :],
        )
        shared = row_ok & (parts > 1)
        if tl.max(shared.to(tl.int32), 0) > 0:
            tl.store(
                Out + out_row[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
                out,
                mask=shared[:, None] & dim_ok[None, :],
            )
            tl.store(LSE + out_row * stride_lt + head, lse, mask=shared)
            # every thread's part is written before the counts say so (the atomic releases at
            # GPU scope; the barrier brings the other threads' stores before it)
            tl.debug_barrier()
            counter = COUNTS + q_row * num_q_heads + head
            counted = tl.atomic_add(counter, 1, mask=shared, sem="acq_rel") + 1
            last = shared & (counted == parts)
            if tl.max(last.to(tl.int32), 0) > 0:
                tl.debug_barrier()
                merged = _merge_parts(
                    Out, LSE, MERGE_TABLE, q_row, head, last, num_parts, stride_ot, stride_oh,
                    stride_lt, dims, dim_ok, BLOCK_M, BLOCK_D, BLOCK_P,
                )  # fmt: skip
                tl.store(
                    FINAL + final,
                    merged.to(FINAL.dtype.element_ty),
                    mask=last[:, None] & dim_ok[None, :],
                )
                tl.store(counter, 0, mask=last)  # ready for the next layer
    else:
        tl.store(
            Out + out_row[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
            out,
            mask=row_ok[:, None] & dim_ok[None, :],
        )
        tl.store(LSE + out_row * stride_lt + head, lse, mask=row_ok)


@triton.jit
def _merge_parts(
    O_PARTS,
    LSE_PARTS,
    TABLE,
    q_row,
    head,
    rows_ok,
    num_parts,
    stride_pt,
    stride_ph,
    stride_lt,
    dims,
    dim_ok,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The LSE merge of the part rows listed in TABLE for each of the tile's (token, head) rows
    where rows_ok; unrolled so that every part's loads are in flight at once. Loads bypass L1:
    other programs wrote these parts during this launch."""
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for p in tl.static_range(BLOCK_P):
        part = tl.load(TABLE + q_row * num_parts + p, mask=rows_ok & (p < num_parts), other=-1)
        present = part >= 0
        row = tl.where(present, part, 0).to(tl.int64)
        lse = tl.load(
            LSE_PARTS + row * stride_lt + head, mask=present, other=float("-inf"),
            cache_modifier=".cg",
        )  # fmt: skip
        o = tl.load(
            O_PARTS + row[:, None] * stride_pt + head[:, None] * stride_ph + dims[None, :],
            mask=present[:, None] & dim_ok[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        m_new = tl.maximum(m, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)  # 0 while nothing is in (m = -inf)
        w = tl.exp(lse - m_safe)  # 0 for absent or empty parts
        total = total * alpha + w
        acc = acc * alpha[:, None] + o * w[:, None]
        m = m_new
    return acc / tl.where(total > 0, total, 1.0)[:, None]


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
