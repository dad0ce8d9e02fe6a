"""Shared-prefix (cascade) levels of decode attention, read in place from the paged KV cache
and merged into the rows' own parts (paged_levels.c), float32 on CPU.

A level's rows share its span of blocks; their queries are stacked and the span is read once
per 64 queries instead of once per row. `paged_levels` folds each level into `out`/`lse` (what
the decode kernel returned for the rows' own keys) by LSE, in place, so a step's decode
attention is two calls: the decode kernel for every row's own keys, then this for the levels.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from server.kernels.cpu import native_library
from server.kernels.cpu.tensor_checks import query_and_caches

__all__ = ["LevelIndex", "available", "level_index", "paged_levels", "supports"]

SOURCE = Path(__file__).with_name("paged_levels.c")
MAX_DIM = 128


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def supports(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the kernel handles this head layout."""
    return num_heads % num_kv_heads == 0 and head_dim % 16 == 0 and head_dim <= MAX_DIM


@dataclass(frozen=True, slots=True)
class LevelIndex:
    """Levels as the C side reads them: level l's member rows are
    `rows[member_offsets[l]:member_offsets[l + 1]]` and its span is the first `tokens[l]`
    tokens of `blocks[block_offsets[l]:block_offsets[l + 1]]` (int64 CPU tensors)."""

    member_offsets: torch.Tensor
    rows: torch.Tensor
    block_offsets: torch.Tensor
    blocks: torch.Tensor
    tokens: torch.Tensor

    @property
    def num_levels(self) -> int:
        return self.tokens.numel()


def level_index(levels: Sequence[tuple[Sequence[int], Sequence[int], int]]) -> LevelIndex:
    """The index of levels given as (member rows, span blocks, span tokens)."""
    rows: list[int] = []
    blocks: list[int] = []
    member_offsets, block_offsets = [0], [0]
    for members, span, _ in levels:
        rows.extend(members)
        blocks.extend(span)
        member_offsets.append(len(rows))
        block_offsets.append(len(blocks))
    return LevelIndex(*(
        torch.tensor(x, dtype=torch.int64)
        for x in (member_offsets, rows, block_offsets, blocks, [n for _, _, n in levels])
    ))


def paged_levels(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    levels: LevelIndex,
    scale: float,
    out: torch.Tensor,
    lse: torch.Tensor,
    check: bool = True,
) -> None:
    """Fold every level's attention into its member rows' `out` [R, Hq, D] and natural-log
    `lse` [R, Hq], in place; q [R, Hq, D] holds one query per row. A row may be a member of
    several levels (nested spans); its parts may be empty (`lse` -inf). `check=False` skips
    the argument checks for callers that built them right."""
    if check:
        _check(q, k_cache, v_cache, levels, out, lse)
    if levels.num_levels == 0:
        return
    lib = _library()
    if lib is None:
        raise RuntimeError("the paged levels kernel could not be built on this machine")
    status = lib.parrot_paged_levels(
        q.data_ptr(), q.shape[1], k_cache.shape[2], q.shape[2],
        k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1], levels.num_levels,
        levels.member_offsets.data_ptr(), levels.rows.data_ptr(),
        levels.block_offsets.data_ptr(), levels.blocks.data_ptr(), levels.tokens.data_ptr(),
        scale, out.data_ptr(), lse.data_ptr(), torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError("paged_levels: the kernel refused its arguments (out of memory?)")


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    levels: LevelIndex,
    out: torch.Tensor,
    lse: torch.Tensor,
) -> None:
    """Shapes, dtypes and bounds, which the C side trusts."""
    rows, num_heads, head_dim, num_blocks, block_size, num_kv_heads = query_and_caches(
        "paged_levels", q, k_cache, v_cache
    )
    if not supports(num_heads, num_kv_heads, head_dim):
        raise ValueError(
            f"paged_levels: head dims must be multiples of 16 up to {MAX_DIM}, got {head_dim}"
        )
    if tuple(out.shape) != tuple(q.shape) or tuple(lse.shape) != (rows, num_heads):
        raise ValueError(
            f"paged_levels: out must be {tuple(q.shape)} and lse {(rows, num_heads)}, got "
            f"{tuple(out.shape)} and {tuple(lse.shape)}"
        )
    for name, t in {"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out, "lse": lse}.items():
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"paged_levels: {name} must be contiguous float32 on CPU")
    for name in LevelIndex.__slots__:
        t = getattr(levels, name)
        if t.dtype != torch.int64 or t.dim() != 1 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"paged_levels: {name} must be a contiguous 1-D int64 CPU tensor")
    n = levels.num_levels
    members, spans = levels.member_offsets, levels.block_offsets
    if members.numel() != n + 1 or spans.numel() != n + 1:
        raise ValueError(f"paged_levels: {n} levels need {n + 1} member and block offsets")
    if n == 0:
        return
    member_counts, block_counts = members[1:] - members[:-1], spans[1:] - spans[:-1]
    if (
        int(members[0]) != 0 or int(members[-1]) != levels.rows.numel()
        or int(spans[0]) != 0 or int(spans[-1]) != levels.blocks.numel()
        or bool((member_counts < 1).any()) or bool((levels.tokens < 1).any())
        or bool((levels.tokens > block_counts * block_size).any())
    ):
        raise ValueError("paged_levels: offsets/tokens do not describe the levels given")
    if int(levels.rows.min()) < 0 or int(levels.rows.max()) >= rows:
        raise ValueError(f"paged_levels: member rows must lie in [0, {rows})")
    bounds = members.tolist()
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if levels.rows[lo:hi].unique().numel() != hi - lo:
            raise ValueError(f"paged_levels: a level lists a row twice: {levels.rows[lo:hi].tolist()}")
    if levels.blocks.numel() and (int(levels.blocks.min()) < 0 or int(levels.blocks.max()) >= num_blocks):
        raise ValueError(f"paged_levels: block ids must lie in [0, {num_blocks})")


@functools.cache
def _library() -> ctypes.CDLL | None:
    return native_library.load_function(
        [SOURCE], "parrot_paged_levels",
        [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ],
        ctypes.c_int,
    )
