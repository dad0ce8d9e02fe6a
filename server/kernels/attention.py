"""The one attention entry point that model layers call."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from server.kernels.metadata import AttentionMetadata


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Store the step's new K/V in the paged cache, then attend every query row causally.

    q: [T, Hq, D]; k, v: [T, Hkv, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D].
    Returns [T, Hq, D].
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    bs = meta.block_size
    for i in range(meta.num_seqs):
        q_len, s_len = meta.query_lens[i], meta.seq_lens[i]
        n_blocks = (s_len + bs - 1) // bs
        table = torch.tensor(meta.block_tables[i][:n_blocks], dtype=torch.int64, device=q.device)
        keys = k_cache.index_select(0, table).reshape(-1, num_kv_heads, head_dim)[:s_len]
        values = v_cache.index_select(0, table).reshape(-1, num_kv_heads, head_dim)[:s_len]
        rows = slice(meta.query_start[i], meta.query_start[i + 1])
        q_pos = torch.arange(s_len - q_len, s_len, device=q.device)
        mask = q_pos[:, None] >= torch.arange(s_len, device=q.device)[None, :]
        o = F.scaled_dot_product_attention(
            q[rows].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
            attn_mask=mask, scale=scale, enable_gqa=True,
        )
        out[rows] = o.transpose(0, 1)
    return out
