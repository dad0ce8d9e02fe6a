"""The one attention entry point that model layers call."""

from __future__ import annotations

import torch

from server.kernels.backends import default_backend_name, get_backend
from server.kernels.metadata import AttentionMetadata


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Store the step's new K/V in the paged cache, then attend every query row causally.

    q: [T, Hq, D]; k, v: [T, Hkv, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]
    (contiguous). Returns [T, Hq, D] in q's dtype. Decode rows in `meta.shared_prefixes`
    levels attend each level once per group (cascade). `backend` picks a kernel by name
    (see `server.kernels.backends`); by default `meta.backend`, else the device decides.
    """
    name = backend or meta.backend or meta.compiled.get("backend")
    if "backend" not in meta.compiled:
        _check_shapes(q, k, v, k_cache, v_cache, meta)
        name = meta.compiled["backend"] = name or default_backend_name(q.device)
    assert name is not None
    return get_backend(name)(q, k, v, k_cache, v_cache, meta, scale)


def _check_shapes(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
) -> None:
    """Once per step (first layer): the shapes agree with each other and with the batch."""
    if q.dim() != 3 or k.shape != v.shape or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"attention: need q [T, Hq, D], k = v [T, Hkv, D], caches [blocks, block_size, Hkv, "
            f"D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    tokens, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, cache_dim = k_cache.shape
    if k.shape[0] != tokens or k.shape[1:] != (num_kv_heads, head_dim) or cache_dim != head_dim:
        raise ValueError(
            f"attention: k {tuple(k.shape)} and caches {tuple(k_cache.shape)} do not match "
            f"q {tuple(q.shape)}"
        )
    if num_q_heads % num_kv_heads:
        raise ValueError(f"attention: {num_q_heads} query heads not a multiple of {num_kv_heads}")
    if tokens != meta.num_tokens or block_size != meta.block_size:
        raise ValueError(
            f"attention: batch has {meta.num_tokens} tokens of block size {meta.block_size}, "
            f"got {tokens} query rows and cache block size {block_size}"
        )
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("attention: KV caches must be contiguous tensors")
    dtypes = {t.dtype for t in (q, k, v, k_cache, v_cache)}
    if len(dtypes) != 1:
        raise ValueError(
            f"attention: q, k, v and the caches must share one dtype, got q {q.dtype}, "
            f"k {k.dtype}, v {v.dtype}, caches {k_cache.dtype} and {v_cache.dtype}"
        )
    if q.device.type == "cpu":
        # not on CUDA: a step there is short enough that walking every block table in Python
        # would cost ~1 ms in 10 at 64 x 4096 tokens; the engine's tables come from its block
        # manager, and what this catches is a hand-built table
        _check_block_ids(meta, k_cache.shape[0])


def _check_block_ids(meta: AttentionMetadata, num_blocks: int) -> None:
    """Every block a sequence reads lies in the caches: the paged kernels trust the ids (a
    wrong one read memory past the cache, or crashed). Lists only: no device sync."""
    bs = meta.block_size
    for i, (length, table) in enumerate(zip(meta.seq_lens, meta.block_tables, strict=True)):
        used = -(-length // bs)
        if used > len(table):
            raise ValueError(
                f"attention: sequence {i} has {length} tokens but only {len(table)} blocks "
                f"of {bs}"
            )
        if used and not 0 <= min(table[:used]) <= max(table[:used]) < num_blocks:
            bad = next(b for b in table[:used] if not 0 <= b < num_blocks)
            raise ValueError(
                f"attention: sequence {i} reads block id {bad}, outside the caches' "
                f"[0, {num_blocks})"
            )
