"""The CUDA backend: our Triton kernels read the paged cache in place (any block size).

Per step the plan becomes one work list: prefill chunks (causal), shared-prefix levels (the
group's decode queries stacked against the level's blocks) and each decode's own suffix.
Decode tasks are split along their KV into chunks when the batch alone would leave the GPU's
multiprocessors idle (flash-decoding); every chunk is a part merged by LSE with the others.
Per layer: the cache write, one attention launch per tile height, one merge launch; with
`TritonConfig.fused`, the attention launch merges the parts and, in steps of decodes only,
writes the cache too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from server.kernels.kv_store import store_kv
from server.kernels.metadata import AttentionMetadata
from server.kernels.step_plan import StepPlan, step_plan_of
from server.kernels.triton_config import TritonConfig
from server.kernels.triton_kernels import (
    ITEM_FIELDS,
    LOG2E,
    NOT_CAUSAL,
    merge_kernel,
    paged_attention_kernel,
    store_kv_kernel,
)


class TritonBackend:
    """The `attention` entry point's work, done by `triton_kernels`."""

    name = "triton"

    def __init__(self, config: TritonConfig | None = None) -> None:
        self.config = config or TritonConfig()

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        num_tokens, num_q_heads, head_dim = q.shape
        _, block_size, num_kv_heads, _ = k_cache.shape
        program = meta.compiled.get("triton")
        if program is None:
            program = _compile(
                step_plan_of(meta),
                num_tokens,
                num_q_heads,
                num_kv_heads,
                q.device,
                q.dtype,
                self.config,
            )
            meta.compiled["triton"] = program
        if not program.stores_kv:
            _store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        elif k.stride() != v.stride():
            k, v = k.contiguous(), v.contiguous()
        if q.stride(-1) != 1:
            q = q.contiguous()
        o_parts = torch.empty(
            (program.num_part_rows, num_q_heads, head_dim), dtype=torch.float32, device=q.device
        )
        lse_parts = torch.empty(
            (program.num_part_rows, num_q_heads), dtype=torch.float32, device=q.device
        )
        block_d = triton.next_power_of_2(head_dim)
        block_p = triton.next_power_of_2(program.num_parts)
        out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
        tuning = {"num_warps": self.config.num_warps}
        if self.config.num_stages is not None:
            tuning["num_stages"] = self.config.num_stages
        for launch in program.launches:
            paged_attention_kernel[(launch.num_items, num_kv_heads)](
                q,
                k_cache,
                v_cache,
                o_parts,
                lse_parts,
                launch.items,
                program.rows,
                program.blocks,
                q.stride(0),
                q.stride(1),
                k_cache.stride(0),
                k_cache.stride(1),
                k_cache.stride(2),
                o_parts.stride(0),
                o_parts.stride(1),
                lse_parts.stride(0),
                scale * LOG2E,
                k,
                v,
                k.stride(0),
                k.stride(1),
                out,
                out.stride(0),
                out.stride(1),
                program.parts_of,
                program.merge_table,
                program.num_parts,
                program.counts,
                num_q_heads,
                GROUP=num_q_heads // num_kv_heads,
                BLOCK_M=launch.block_m,
                BLOCK_N=self.config.block_n,
                PAGE=block_size,
                HEAD_DIM=head_dim,
                BLOCK_D=block_d,
                PRECISION="ieee" if q.dtype == torch.float32 else None,
                FUSED=self.config.fused,
                STORE_KV=program.stores_kv,
                BLOCK_P=block_p,
                **tuning,
            )
        if num_tokens and not self.config.fused:
            merge_kernel[(num_tokens, num_q_heads)](
                o_parts,
                lse_parts,
                program.merge_table,
                out,
                program.num_parts,
                o_parts.stride(0),
                o_parts.stride(1),
                lse_parts.stride(0),
                out.stride(0),
                out.stride(1),
                HEAD_DIM=head_dim,
                BLOCK_P=block_p,
                BLOCK_D=block_d,
            )
        return out


@dataclass(slots=True)
class _Launch:
    items: torch.Tensor  # [num_items, ITEM_FIELDS] int32
    num_items: int
    block_m: int


@dataclass(slots=True)
class _TritonProgram:
    rows: torch.Tensor  # int32 query rows of every task, task after task
    blocks: torch.Tensor  # int32 block ids of every task, task after task
    launches: list[_Launch]
    num_part_rows: int
    merge_table: torch.Tensor  # [num_tokens, num_parts] int32 part rows, -1 for none
    num_parts: int
    parts_of: torch.Tensor  # [num_tokens] int32: how many parts each token has
    counts: torch.Tensor  # [num_tokens * num_q_heads] int32 zeros: the fused merge's counters
    stores_kv: bool  # the attention launch writes the step's K/V (fused, decodes only)


@dataclass(slots=True)
class _Task:
    rows: list[int]
    blocks: tuple[int, ...]
    kv_len: int
    first_pos: int  # position of the first query row (NOT_CAUSAL for decode tasks)
    block_m: int
    new_key: bool = False  # a decode's own keys, ending at the key its row adds this step


def _compile(
    plan: StepPlan,
    num_tokens: int,
    num_q_heads: int,
    num_kv_heads: int,
    device: torch.device,
    dtype: torch.dtype,
    cfg: TritonConfig,
) -> _TritonProgram:
    group = num_q_heads // num_kv_heads
    narrow = max(cfg.narrow_rows, triton.next_power_of_2(group))
    wide = narrow if dtype == torch.float32 else max(cfg.wide_rows, triton.next_power_of_2(group))
    tasks = [
        _Task(
            list(range(p.first_row, p.first_row + p.num_rows)),
            p.span.blocks,
            p.span.num_tokens,
            p.span.num_tokens - p.num_rows,
            wide,
        )
        for p in plan.prefills
    ]
    for level in plan.levels:
        height = wide if len(level.rows) * group > narrow else narrow
        tasks.append(
            _Task(list(level.rows), level.span.blocks, level.span.num_tokens, NOT_CAUSAL, height)
        )
    for suffix in plan.suffixes:
        if suffix.span.num_tokens:
            tasks.append(
                _Task(
                    [suffix.row],
                    suffix.span.blocks,
                    suffix.span.num_tokens,
                    NOT_CAUSAL,
                    narrow,
                    new_key=True,
                )
            )
    # Only where nothing else reads this step's keys: prefill rows read each other's, and a
    # decode with no own keys finds its new key inside a shared level.
    stores_kv = (
        cfg.fused
        and num_tokens > 0
        and not plan.prefills
        and all(s.span.num_tokens for s in plan.suffixes)
    )
    chunk = _kv_chunk(tasks, group, num_kv_heads, _num_sms(device), cfg)

    rows: list[int] = []
    blocks: list[int] = []
    items: dict[int, list[list[int]]] = {}
    parts: list[list[int]] = [[] for _ in range(num_tokens)]
    next_part = 0
    for task in tasks:
        row_off, block_off = len(rows), len(blocks)
        rows.extend(task.rows)
        blocks.extend(task.blocks)
        per_tile = task.block_m // group
        causal = task.first_pos != NOT_CAUSAL
        step = task.kv_len if causal or chunk is None else chunk
        for t0 in range(0, len(task.rows), per_tile):
            count = min(per_tile, len(task.rows) - t0)
            first_pos = task.first_pos + t0 if causal else NOT_CAUSAL
            for lo in range(0, task.kv_len, step):
                hi = min(lo + step, task.kv_len)
                new_key = stores_kv and task.new_key and hi == task.kv_len
                items.setdefault(task.block_m, []).append(
                    [row_off + t0, count, block_off, lo, hi, first_pos, next_part, int(new_key)]
                )
                for j in range(count):
                    parts[task.rows[t0 + j]].append(next_part + j)
                next_part += count
    num_parts = max((len(p) for p in parts), default=1)
    table = [p + [-1] * (num_parts - len(p)) for p in parts]

    def int32(values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=device)

    launches = [
        _Launch(int32(its).view(-1, ITEM_FIELDS), len(its), block_m)
        for block_m, its in sorted(items.items())
    ]
    return _TritonProgram(
        rows=int32(rows or [0]),
        blocks=int32(blocks or [0]),
        launches=launches,
        num_part_rows=max(next_part, 1),
        merge_table=int32(table).view(num_tokens, num_parts),
        num_parts=num_parts,
        parts_of=int32([len(p) for p in parts] or [0]),
        counts=torch.zeros(max(num_tokens * num_q_heads, 1), dtype=torch.int32, device=device),
        stores_kv=stores_kv,
    )


def _kv_chunk(
    tasks: list[_Task], group: int, num_kv_heads: int, num_sms: int, cfg: TritonConfig
) -> int | None:
    """KV tokens per decode work item, or None when no decode task needs splitting.

    The step's decode work (query tiles x KV tokens) spread over `programs_per_sm` programs per
    multiprocessor gives each program's share; any decode task longer than that share is split
    (flash-decoding). Judged per task, not by the step's program count: a shared-prefix level is
    a few long programs among many short suffix ones, and it alone sets the kernel's time.
    """
    target = cfg.programs_per_sm * num_sms
    decode_work = 0
    longest = 0
    for task in tasks:
        if task.first_pos == NOT_CAUSAL:
            tiles = -(-len(task.rows) // (task.block_m // group)) * num_kv_heads
            decode_work += tiles * task.kv_len
            longest = max(longest, task.kv_len)
    if decode_work == 0:
        return None
    share = -(-decode_work // target)
    chunk = max(cfg.min_chunk, -(-share // cfg.block_n) * cfg.block_n)
    return chunk if chunk < longest else None


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the Triton interpreter on CPU: small, so that tests exercise the KV split


def _store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """`store_kv` in one launch for both caches."""
    num_tokens = k.shape[0]
    if not num_tokens:
        return
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        store_kv(k, v, k_cache, v_cache, slot_mapping)
        return
    k2, v2 = k.reshape(num_tokens, -1), v.reshape(num_tokens, -1)
    if k2.stride(1) != 1 or v2.stride(1) != 1:
        k2, v2 = k2.contiguous(), v2.contiguous()
    row = k2.shape[1]
    store_kv_kernel[(num_tokens,)](
        k2,
        v2,
        k_cache,
        v_cache,
        slot_mapping,
        k2.stride(0),
        v2.stride(0),
        ROW=row,
        BLOCK=triton.next_power_of_2(row),
    )
