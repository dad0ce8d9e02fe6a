"""Decode attention for every decode row in one call, reading the paged KV cache in place
(paged_decode.c), float32 on CPU.

PyTorch's CPU flash-attention kernel costs 35-100 µs per call at decode sizes, whatever the
key count, and needs a call (or a gather) per sequence; at 32 sequences that was most of a
decode step. This kernel takes the rows' block lists instead and splits the work into
(row, KV head, chunk) tasks over every core. It returns each row's LSE too, so shared-prefix
(cascade) parts computed elsewhere merge with it exactly.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from server.kernels.cpu import native_library
from server.kernels.cpu.tensor_checks import query_and_caches

__all__ = ["DEFAULT_CHUNK_TOKENS", "available", "paged_decode", "supports"]

SOURCE = Path(__file__).with_name("paged_decode.c")
DEFAULT_CHUNK_TOKENS = 0  # the kernel picks (auto_chunk: balance, >= 256 tokens a task)
MAX_HEADS, HEAD_DIMS = 64, (16, 32, 64, 128)


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def supports(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the kernel handles this head layout (others use the SDPA path)."""
    return num_heads % num_kv_heads == 0 and num_heads <= MAX_HEADS and head_dim in HEAD_DIMS


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    num_tokens: torch.Tensor,
    scale: float,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [R, Hq, D] (one query per row) over each row's own keys: (out, lse).

    Row r attends the first `num_tokens[r]` tokens held by the blocks
    `blocks[offsets[r]:offsets[r + 1]]` (int64 physical ids) of the caches
    [num_blocks, block_size, Hkv, D]. Returns out [R, Hq, D] and the natural-log LSE [R, Hq]
    (float32); a row with no tokens gets out 0 and LSE -inf. The C side trusts its arguments:
    `check=False` skips checking them (a dozen tensor ops, more than the kernel costs at small
    sizes) for callers that built them right, as the CPU backend does once per step from the
    step plan.
    """
    if check:
        _check(q, k_cache, v_cache, blocks, offsets, num_tokens)
    lib = _library()
    if lib is None:
        raise RuntimeError("the paged decode kernel could not be built on this machine")
    rows, num_heads, head_dim = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(rows, num_heads, dtype=torch.float32)
    if rows:
        status = lib.parrot_paged_decode(
            q.data_ptr(), rows, num_heads, k_cache.shape[2], head_dim,
            k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1],
            blocks.data_ptr(), offsets.data_ptr(), num_tokens.data_ptr(),
            scale, chunk_tokens, out.data_ptr(), lse.data_ptr(), torch.get_num_threads(),
        )
        if status != 0:
            raise RuntimeError("paged_decode: the kernel refused its arguments (out of memory?)")
    return out, lse


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    num_tokens: torch.Tensor,
) -> None:
    """Shapes, dtypes and bounds, which the C side trusts."""
    rows, num_heads, head_dim, num_blocks, block_size, num_kv_heads = query_and_caches(
        "paged_decode", q, k_cache, v_cache
    )
    if not supports(num_heads, num_kv_heads, head_dim):
        raise ValueError(
            f"paged_decode: supports up to {MAX_HEADS} query heads and head dims {HEAD_DIMS}, "
            f"got {num_heads} and {head_dim}"
        )
    tensors = {"q": q, "k_cache": k_cache, "v_cache": v_cache}
    for name, t in tensors.items():
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"paged_decode: {name} must be float32 on CPU, got {t.dtype} {t.device}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("paged_decode: the caches must be contiguous")
    for name, t in {"blocks": blocks, "offsets": offsets, "num_tokens": num_tokens}.items():
        if t.dtype != torch.int64 or t.dim() != 1 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"paged_decode: {name} must be a contiguous 1-D int64 CPU tensor")
    if offsets.numel() != rows + 1 or num_tokens.numel() != rows:
        raise ValueError(
            f"paged_decode: {rows} rows need {rows + 1} offsets and {rows} token counts, got "
            f"{offsets.numel()} and {num_tokens.numel()}"
        )
    counts = offsets[1:] - offsets[:-1]
    if rows and (
        int(offsets[0]) != 0
        or int(offsets[-1]) != blocks.numel()
        or bool((counts < 0).any())
        or bool((num_tokens < 0).any())
        or bool((num_tokens > counts * block_size).any())
    ):
        raise ValueError("paged_decode: offsets/num_tokens do not describe the blocks given")
    if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= num_blocks):
        raise ValueError(f"paged_decode: block ids must lie in [0, {num_blocks})")


@functools.cache
def _library() -> ctypes.CDLL | None:
    return native_library.load_function(
        [SOURCE], "parrot_paged_decode",
        [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_float, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ],
        ctypes.c_int,
    )
