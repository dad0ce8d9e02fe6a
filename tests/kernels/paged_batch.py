"""Builds real paged batches for kernel tests: contexts, forks and steps over random caches."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from server.kernels import AttentionMetadata, attention, build_attention_metadata
from server.kernels.cascade_config import CascadeConfig
from server.kernels.reference import reference_attention


@dataclass
class Ctx:
    """A sequence's block table and how many tokens it holds."""

    table: list[int] = field(default_factory=list)
    length: int = 0


class Pool:
    """Hands out block ids like the engine: forks share full blocks, a partial one is copied."""

    def __init__(self, num_blocks: int, block_size: int, seed: int, scattered: bool) -> None:
        self.block_size = block_size
        self.free = list(range(num_blocks))
        if scattered:
            random.Random(seed).shuffle(self.free)
        self.free.reverse()

    def new(self, num_tokens: int = 0) -> Ctx:
        ctx = Ctx()
        self.extend(ctx, num_tokens)
        return ctx

    def fork(self, parent: Ctx) -> Ctx:
        full = parent.length // self.block_size
        child = Ctx(parent.table[:full], full * self.block_size)
        self.extend(child, parent.length - child.length)  # the copied partial block
        return child

    def extend(self, ctx: Ctx, num_tokens: int) -> None:
        ctx.length += num_tokens
        while len(ctx.table) * self.block_size < ctx.length:
            ctx.table.append(self.free.pop())


@dataclass
class Step:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float


def make_step(
    pool: Pool,
    work: list[tuple[Ctx, int]],
    num_blocks: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    cascade: bool = True,
    cascade_config: CascadeConfig | None = None,
) -> Step:
    """One step in which each (ctx, n) appends n tokens (n == 1: a decode) and attends."""
    for ctx, n in work:
        pool.extend(ctx, n)
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(n for _, n in work)
    shape = (num_blocks, pool.block_size, num_kv_heads, head_dim)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(dtype=dtype, device=device)

    meta = build_attention_metadata(
        [n for _, n in work],
        [ctx.length for ctx, _ in work],
        [ctx.table for ctx, _ in work],
        pool.block_size,
        device,
        cascade=cascade,
        cascade_config=cascade_config,
    )
    return Step(
        q=rand(tokens, num_kv_heads * group, head_dim),
        k=rand(tokens, num_kv_heads, head_dim),
        v=rand(tokens, num_kv_heads, head_dim),
        k_cache=rand(*shape),
        v_cache=rand(*shape),
        meta=meta,
        scale=head_dim**-0.5,
    )


def forked_decodes(
    group: int,
    head_dim: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    cascade: bool = True,
    device: str = "cpu",
) -> Step:
    """Decodes only: 5 forks of a 150-token context (one with a single own key), a lone decode
    long enough to be split along its KV, and a lone short one; the forks' level planned
    whatever the device's cost rule says."""
    pool = Pool(300, 16, seed, scattered=True)
    root = pool.new(150)
    forks = [pool.fork(root) for _ in range(5)]
    for fork, extra in zip(forks, (0, 1, 9, 30, 60), strict=True):
        pool.extend(fork, extra)
    work = [(f, 1) for f in forks] + [(pool.new(900), 1), (pool.new(3), 1)]
    forced = CascadeConfig(min_prefix_tokens=1, min_group_size=2)
    return make_step(
        pool, work, 300, 2, group, head_dim, dtype=dtype, device=device, seed=seed, cascade=cascade,
        cascade_config=forced,
    )  # fmt: skip


def relative_error(step: Step, backend: str | None = None, run=None) -> float:
    """max |kernel - float64 reference| / max |reference|, after checking the cache write."""
    expected = reference_attention(
        step.q, step.k, step.v, step.k_cache, step.v_cache, step.meta, step.scale
    )
    if run is None:
        out = attention(
            step.q,
            step.k,
            step.v,
            step.k_cache,
            step.v_cache,
            step.meta,
            step.scale,
            backend=backend,
        )
    else:
        out = run(step.q, step.k, step.v, step.k_cache, step.v_cache, step.meta, step.scale)
    assert out.shape == step.q.shape and out.dtype == step.q.dtype
    hkv, d = step.k_cache.shape[2:]
    written = step.k_cache.view(-1, hkv, d).index_select(0, step.meta.slot_mapping)
    assert torch.equal(written, step.k)
    err = (out.to(torch.float64) - expected).abs().max() / expected.abs().max()
    return float(err)
