"""Argument checks shared by the CPU attention kernels' wrappers (the C side trusts them)."""

from __future__ import annotations

import torch


def query_and_caches(
    kernel: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> tuple[int, int, int, int, int, int]:
    """(rows, query heads, head dim, blocks, block size, KV heads) of q [R, Hq, D] against
    caches [blocks, block_size, Hkv, D], once their shapes are checked to fit each other."""
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"{kernel}: need q [R, Hq, D] and caches [blocks, block_size, Hkv, D], got "
            f"q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    rows, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, cache_dim = k_cache.shape
    if cache_dim != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"{kernel}: q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}")
    return rows, num_heads, head_dim, num_blocks, block_size, num_kv_heads
