"""Plain float64 attention over the paged cache: the yardstick the tests measure kernels by.

Reads nothing of the cascade plan: every sequence attends its own block table, causally.
"""

from __future__ import annotations

import torch

from server.kernels.metadata import AttentionMetadata


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """What `attention` must return, in float64; the caches given are left untouched."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    keys = k_cache.to(torch.float64).reshape(-1, num_kv_heads, head_dim)
    values = v_cache.to(torch.float64).reshape(-1, num_kv_heads, head_dim)
    keys[meta.slot_mapping.to(keys.device)] = k.to(torch.float64)
    values[meta.slot_mapping.to(keys.device)] = v.to(torch.float64)
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    bs = meta.block_size
    for i in range(meta.num_seqs):
        q_len, s_len = meta.query_lens[i], meta.seq_lens[i]
        slots = [meta.block_tables[i][p // bs] * bs + p % bs for p in range(s_len)]
        index = torch.tensor(slots, dtype=torch.long, device=keys.device)
        rows = slice(meta.query_start[i], meta.query_start[i + 1])
        o, _ = reference_partial(
            q[rows], keys[index], values[index], scale, first_query_pos=s_len - q_len
        )
        out[rows] = o
    return out


def reference_partial(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    first_query_pos: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [Lq, Hq, D] over keys/values [Lk, Hkv, D] in float64: (out, lse).

    With `first_query_pos`, query j sits at position first_query_pos + j and sees keys 0..that
    position (causal); without it every query sees every key. Empty key sets give out 0 and
    lse -inf.
    """
    q64, k64, v64 = q.to(torch.float64), keys.to(torch.float64), values.to(torch.float64)
    group = q.shape[1] // keys.shape[1]
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v64.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q64, k64) * scale
    if first_query_pos is not None:
        q_pos = torch.arange(q.shape[0], device=q.device) + first_query_pos
        visible = q_pos[:, None] >= torch.arange(keys.shape[0], device=q.device)[None, :]
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [Hq, Lq]
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.einsum("hqk,khd->qhd", probs, v64)
    return out, lse.transpose(0, 1)
