"""Causal attention for chunks of query rows (prefill) over the paged KV cache, in one call for
every sequence of a step (paged_prefill.c), float32 on CPU.

PyTorch's CPU flash attention reaches ~90 GFLOP/s on SmolLM2's 64-wide heads and needs a call
per sequence; this kernel works transposed (32 queries per task across the vector lanes,
keys broadcast), so the softmax needs no horizontal reductions, and reads the cache in place.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from server.kernels.cpu import native_library
from server.kernels.cpu.tensor_checks import query_and_caches

__all__ = ["available", "paged_prefill", "supports"]

SOURCE = Path(__file__).with_name("paged_prefill.c")
MAX_DIM = 128


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def supports(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the kernel handles this head layout."""
    return num_heads % num_kv_heads == 0 and head_dim % 16 == 0 and head_dim <= MAX_DIM


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]],
    scale: float,
) -> torch.Tensor:
    """Causal attention of q [T, Hq, D]: sequence i owns the next `query_lens[i]` rows, its
    last tokens of `seq_lens[i]` in the blocks `block_tables[i]` of the caches
    [num_blocks, block_size, Hkv, D] (the rows' own K/V already stored). Returns [T, Hq, D]."""
    tokens, num_heads, head_dim, num_blocks, block_size, num_kv_heads = query_and_caches(
        "paged_prefill", q, k_cache, v_cache
    )
    if not supports(num_heads, num_kv_heads, head_dim):
        raise ValueError(
            f"paged_prefill: head dims must be multiples of 16 up to {MAX_DIM}, got {head_dim}"
        )
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"paged_prefill: {name} must be float32 on CPU, got {t.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("paged_prefill: the caches must be contiguous")
    if sum(query_lens) != tokens or not len(query_lens) == len(seq_lens) == len(block_tables):
        raise ValueError(
            f"paged_prefill: {len(query_lens)} query lengths summing to {sum(query_lens)} for "
            f"{tokens} rows, {len(seq_lens)} seq lens, {len(block_tables)} block tables"
        )
    blocks: list[int] = []
    first_block, first_row = [], [0]
    for i, (n, length, table) in enumerate(zip(query_lens, seq_lens, block_tables, strict=True)):
        used = -(-length // block_size)
        if not 0 <= n <= length or used > len(table):
            raise ValueError(f"paged_prefill: sequence {i}: {n} rows, {length} tokens, "
                             f"{len(table)} blocks")
        first_block.append(len(blocks))
        blocks.extend(table[:used])
        first_row.append(first_row[-1] + n)
    if blocks and not 0 <= min(blocks) <= max(blocks) < num_blocks:
        raise ValueError(f"paged_prefill: block ids must lie in [0, {num_blocks})")
    lib = _library()
    if lib is None:
        raise RuntimeError("the paged prefill kernel could not be built on this machine")
    q = q.contiguous()
    out = torch.empty_like(q)
    index = [
        torch.tensor(x, dtype=torch.int64)
        for x in (first_row[:-1], query_lens, seq_lens, blocks, first_block)
    ]
    status = lib.parrot_paged_prefill(
        q.data_ptr(), len(query_lens), *(t.data_ptr() for t in index[:3]), num_heads,
        num_kv_heads, head_dim, k_cache.data_ptr(), v_cache.data_ptr(), block_size,
        index[3].data_ptr(), index[4].data_ptr(), scale, out.data_ptr(), torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError("paged_prefill: the kernel refused its arguments (out of memory?)")
    return out


@functools.cache
def _library() -> ctypes.CDLL | None:
    return native_library.load_function(
        [SOURCE], "parrot_paged_prefill",
        [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
        ],
        ctypes.c_int,
    )
