"""Runs a step plan with dense attention calls over views and gathers of the paged cache.

This is the CPU backend (and the CUDA fallback without Triton). Contiguous block runs are read
in place (a strided view of the cache, no copy); scattered blocks are gathered once per layer.
Decode rows:
  - a shared-prefix level is one call: the group's queries, GQA heads folded into the query
    length, against the level's KV;
  - each sequence's own blocks after its deepest level: long contiguous runs in place, one call
    per run; the rest (typically a few recent blocks) gathered, and rows of similar length
    batched into one padded call;
  - the parts of a row are merged by their LSE.
Prefill rows: the new tokens attend each other causally (a square call on the step's k/v) and
the cached context non-causally; the two parts are merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from server.kernels.attend_ops import AttendFn
from server.kernels.merge import merge_attention_states
from server.kernels.metadata import AttentionMetadata
from server.kernels.step_plan import KVSpan, StepPlan, step_plan_of


@dataclass(frozen=True, slots=True)
class SdpaConfig:
    """How decode KV is split between in-place reads and gathers.

    `min_inplace_blocks`: a contiguous run of at least this many blocks of a sequence's own KV is
    read in place (one extra call and merge part) instead of being gathered with the rest.
    `max_tail_padding`: rows whose gathered tails are batched into one call may pad up to this
    factor of their real tokens (1.0 batches only equal lengths, for kernels without masks).
    """

    min_inplace_blocks: int = 8
    max_tail_padding: float = 1.5

    def __post_init__(self) -> None:
        if self.min_inplace_blocks < 1:
            raise ValueError(f"min_inplace_blocks must be >= 1, got {self.min_inplace_blocks}")
        if self.max_tail_padding < 1.0:
            raise ValueError(f"max_tail_padding must be >= 1.0, got {self.max_tail_padding}")


class SdpaBackend:
    """The `attention` entry point's work, done with one `AttendFn`."""

    def __init__(self, name: str, attend: AttendFn, config: SdpaConfig | None = None) -> None:
        self.name = name
        self.attend = attend
        self.config = config or SdpaConfig()

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
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
        key = f"sdpa:{self.name}"
        program = meta.compiled.get(key)
        if program is None:
            program = _compile(step_plan_of(meta), meta.block_size, q, num_kv_heads, self.config)
            meta.compiled[key] = program
        if program.pure_decode:
            return self._decode(q, k_cache, v_cache, program, scale)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if program.num_decode:
            decoded = self._decode(q.index_select(0, program.dec_rows), k_cache, v_cache, program, scale)
            out.index_copy_(0, program.dec_rows, decoded)
        for call in program.prefills:
            self._prefill(q, k, v, k_cache, v_cache, call, scale, out)
        return out

    def _decode(
        self,
        qd: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        p: _Program,
        scale: float,
    ) -> torch.Tensor:
        """qd [Bd, Hq, D]: the decode rows; returns their outputs [Bd, Hq, D]."""
        bd, hq, d = qd.shape
        hkv = k_cache.shape[2]
        grouped = qd.view(bd, hkv, hq // hkv, d)
        if p.direct is not None:
            o, _ = self._attend_tail(grouped, k_cache, v_cache, p.direct, scale) if isinstance(
                p.direct, _TailCall
            ) else self._attend_run(grouped, k_cache, v_cache, p.direct, scale)
            return o.reshape(bd, hq, d)
        if p.num_parts == 1:
            o_parts = torch.empty((1, bd, hq, d), dtype=qd.dtype, device=qd.device)
            lse_parts = torch.empty((1, bd, hq), dtype=torch.float32, device=qd.device)
        else:
            o_parts = torch.zeros((p.num_parts, bd, hq, d), dtype=qd.dtype, device=qd.device)
            lse_parts = torch.full(
                (p.num_parts, bd, hq), float("-inf"), dtype=torch.float32, device=qd.device
            )
        o_rows, lse_rows = o_parts.view(-1, hq, d), lse_parts.view(-1, hq)
        for tail in p.tails:
            o, lse = self._attend_tail(grouped, k_cache, v_cache, tail, scale)
            if tail.rows is None:
                o_rows[:bd] = o.reshape(bd, hq, d)
                lse_rows[:bd] = lse.reshape(bd, hq)
            else:
                o_rows.index_copy_(0, tail.rows, o.reshape(-1, hq, d))
                lse_rows.index_copy_(0, tail.rows, lse.reshape(-1, hq))
        if p.levels:
            q_flat = qd.reshape(-1, d)
            o_flat, lse_flat = o_parts.view(-1, d), lse_parts.view(-1)
            for level in p.levels:
                stacked = q_flat.index_select(0, level.q_index).view(1, hkv, -1, d)
                o, lse = self.attend(
                    stacked, *_span_kv(k_cache, v_cache, level.source), False, scale, None
                )
                o_flat.index_copy_(0, level.dest, o.reshape(-1, d))
                lse_flat.index_copy_(0, level.dest, lse.reshape(-1))
        for run in p.runs:
            o, lse = self._attend_run(grouped, k_cache, v_cache, run, scale)
            o_parts[run.slot, run.drow] = o.reshape(hq, d)
            lse_parts[run.slot, run.drow] = lse.reshape(hq)
        if p.num_parts == 1:
            return o_parts[0]
        merged, _ = merge_attention_states(o_parts, lse_parts)
        return merged.to(qd.dtype)

    def _attend_tail(
        self, grouped: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tail: _TailCall,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = grouped if tail.rows is None else grouped.index_select(0, tail.rows)
        b, hkv, d = q.shape[0], k_cache.shape[2], k_cache.shape[3]
        keys = k_cache.index_select(0, tail.gather).view(b, -1, hkv, d)[:, : tail.num_tokens]
        values = v_cache.index_select(0, tail.gather).view(b, -1, hkv, d)[:, : tail.num_tokens]
        mask = None
        if tail.valid is not None:
            mask = tail.masks.get(q.dtype)
            if mask is None:
                mask = torch.zeros(tail.valid.shape, dtype=q.dtype, device=q.device)
                mask = mask.masked_fill(~tail.valid, float("-inf")).view(b, 1, 1, -1)
                tail.masks[q.dtype] = mask
        return self.attend(q, keys.transpose(1, 2), values.transpose(1, 2), False, scale, mask)

    def _attend_run(
        self, grouped: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, run: _RunCall,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = grouped[run.drow].unsqueeze(0)
        return self.attend(q, *_span_kv(k_cache, v_cache, run.source), False, scale, None)

    def _prefill(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        call: _PrefillCall,
        scale: float,
        out: torch.Tensor,
    ) -> None:
        rows = slice(call.start, call.end)
        qs = q[rows].transpose(0, 1).unsqueeze(0)
        o, lse = self.attend(
            qs, k[rows].transpose(0, 1).unsqueeze(0), v[rows].transpose(0, 1).unsqueeze(0),
            True, scale, None,
        )
        if call.context is not None:
            o_ctx, lse_ctx = self.attend(
                qs, *_span_kv(k_cache, v_cache, call.context), False, scale, None
            )
            merged, _ = merge_attention_states(torch.stack((o, o_ctx)), torch.stack((lse, lse_ctx)))
            o = merged.to(q.dtype)
        out[rows] = o[0].transpose(0, 1)


@dataclass(slots=True)
class _Source:
    """KV tokens to attend: a contiguous block run read in place, or gathered blocks."""

    first_block: int
    gather: torch.Tensor | None
    num_tokens: int


@dataclass(slots=True)
class _LevelCall:
    q_index: torch.Tensor  # rows of qd.view(-1, D), ordered (kv head, sequence, q head in group)
    dest: torch.Tensor  # the same rows' places in the parts buffer viewed as [-1, D]
    source: _Source


@dataclass(slots=True)
class _RunCall:
    drow: int
    slot: int
    source: _Source


@dataclass(slots=True)
class _TailCall:
    rows: torch.Tensor | None  # decode rows (None: all of them, in order); their part slot is 0
    gather: torch.Tensor  # [rows * blocks_per_row] block ids
    num_tokens: int  # per row, padded
    valid: torch.Tensor | None  # [rows, num_tokens] bool, None when no row is padded
    masks: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)


@dataclass(slots=True)
class _PrefillCall:
    start: int
    end: int
    context: _Source | None


@dataclass(slots=True)
class _Program:
    pure_decode: bool  # every row decodes, in row order
    dec_rows: torch.Tensor | None
    num_decode: int
    num_parts: int
    tails: list[_TailCall]
    levels: list[_LevelCall]
    runs: list[_RunCall]
    prefills: list[_PrefillCall]
    direct: _TailCall | _RunCall | None  # the one call that yields every decode row, if so


def _span_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, source: _Source
) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, Hkv, L, D] views (or gathered copies) of a source's keys and values."""
    _, bs, hkv, d = k_cache.shape
    n = source.num_tokens
    if source.gather is None:
        offset = source.first_block * bs * hkv * d
        size, stride = (1, hkv, n, d), (n * hkv * d, d, hkv * d, 1)
        return (
            k_cache.as_strided(size, stride, k_cache.storage_offset() + offset),
            v_cache.as_strided(size, stride, v_cache.storage_offset() + offset),
        )
    keys = k_cache.index_select(0, source.gather).view(-1, hkv, d)[:n]
    values = v_cache.index_select(0, source.gather).view(-1, hkv, d)[:n]
    return keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0)


def _compile(
    plan: StepPlan, block_size: int, q: torch.Tensor, num_kv_heads: int, cfg: SdpaConfig
) -> _Program:
    device, num_q_heads = q.device, q.shape[1]
    group = num_q_heads // num_kv_heads
    num_decode = len(plan.suffixes)
    parts_used = [0] * num_decode
    tail_rows: list[tuple[int, list[int], int]] = []
    own_runs: list[tuple[int, KVSpan]] = []
    for d, suffix in enumerate(plan.suffixes):
        runs, tail_blocks, tail_tokens = _split_own_span(suffix.span, block_size, cfg)
        if tail_tokens:
            tail_rows.append((d, tail_blocks, tail_tokens))
            parts_used[d] = 1
        own_runs.extend((d, run) for run in runs)
    drow_of = {row: d for d, row in enumerate(plan.decode_rows)}
    heads = (
        torch.arange(num_kv_heads, device=device)[:, None, None] * group
        + torch.arange(group, device=device)[None, None, :]
    )
    levels: list[_LevelCall] = []
    for level in plan.levels:
        drows = [drow_of[r] for r in level.rows]
        slots = []
        for d in drows:
            slots.append(parts_used[d])
            parts_used[d] += 1
        d_t = torch.tensor(drows, dtype=torch.long, device=device)
        slot_t = torch.tensor(slots, dtype=torch.long, device=device)
        q_index = (d_t * num_q_heads)[None, :, None] + heads
        dest = ((slot_t * num_decode + d_t) * num_q_heads)[None, :, None] + heads
        levels.append(
            _LevelCall(q_index.reshape(-1), dest.reshape(-1), _source(level.span, block_size, device))
        )
    runs: list[_RunCall] = []
    for d, span in own_runs:
        runs.append(_RunCall(d, parts_used[d], _source(span, block_size, device)))
        parts_used[d] += 1
    tails = _tail_calls(tail_rows, num_decode, block_size, cfg.max_tail_padding, device)
    prefills = []
    for task in plan.prefills:
        context = task.span.num_tokens - task.num_rows
        source = None
        if context > 0:
            blocks = task.span.blocks[: -(-context // block_size)]
            source = _source(KVSpan(blocks, context), block_size, device)
        prefills.append(_PrefillCall(task.first_row, task.first_row + task.num_rows, source))
    decode_rows = plan.decode_rows
    pure = not plan.prefills and decode_rows == list(range(num_decode))
    num_parts = max(parts_used, default=0)
    direct: _TailCall | _RunCall | None = None
    if pure and num_parts == 1 and not levels:
        if len(tails) == 1 and not runs and tails[0].rows is None:
            direct = tails[0]
        elif num_decode == 1 and not tails and len(runs) == 1:
            direct = runs[0]
    return _Program(
        pure_decode=pure,
        dec_rows=torch.tensor(decode_rows, dtype=torch.long, device=device),
        num_decode=num_decode,
        num_parts=num_parts,
        tails=tails,
        levels=levels,
        runs=runs,
        prefills=prefills,
        direct=direct,
    )


def _split_own_span(
    span: KVSpan, block_size: int, cfg: SdpaConfig
) -> tuple[list[KVSpan], list[int], int]:
    """Long contiguous runs (read in place) and the remaining blocks (gathered) of a span.

    Decode attention is order-free over keys, so the remainder may skip the runs; only the
    span's last block can be partly filled, and it stays last.
    """
    blocks, total = span.blocks, span.num_tokens
    runs: list[KVSpan] = []
    tail: list[int] = []
    tail_tokens = 0
    start = 0
    for i in range(1, len(blocks) + 1):
        if i < len(blocks) and blocks[i] == blocks[i - 1] + 1:
            continue
        tokens = min(total, i * block_size) - start * block_size
        if i - start >= cfg.min_inplace_blocks:
            runs.append(KVSpan(blocks[start:i], tokens))
        else:
            tail.extend(blocks[start:i])
            tail_tokens += tokens
        start = i
    return runs, tail, tail_tokens


def _tail_calls(
    rows: list[tuple[int, list[int], int]],
    num_decode: int,
    block_size: int,
    max_padding: float,
    device: torch.device,
) -> list[_TailCall]:
    """Batch gathered tails of similar length into padded calls."""
    calls: list[_TailCall] = []
    ordered = sorted(rows, key=lambda r: -r[2])
    i = 0
    while i < len(ordered):
        longest = ordered[i][2]
        real = 0
        j = i
        while j < len(ordered) and (j - i + 1) * longest <= max_padding * (real + ordered[j][2]):
            real += ordered[j][2]
            j += 1
        batch = ordered[i:j]
        i = j
        width = max(len(blocks) for _, blocks, _ in batch)
        gather = [b for _, blocks, _ in batch for b in blocks + [blocks[0]] * (width - len(blocks))]
        drows = [d for d, _, _ in batch]
        valid = None
        if any(n < longest for _, _, n in batch):
            lengths = torch.tensor([n for _, _, n in batch], device=device)
            valid = torch.arange(longest, device=device)[None, :] < lengths[:, None]
        in_order = drows == list(range(num_decode))
        calls.append(
            _TailCall(
                rows=None if in_order else torch.tensor(drows, dtype=torch.long, device=device),
                gather=torch.tensor(gather, dtype=torch.long, device=device),
                num_tokens=longest,
                valid=valid,
            )
        )
    return calls


def _source(span: KVSpan, block_size: int, device: torch.device) -> _Source:
    blocks = span.blocks
    if all(b == a + 1 for a, b in zip(blocks, blocks[1:], strict=False)):
        return _Source(blocks[0], None, span.num_tokens)
    return _Source(-1, torch.tensor(blocks, dtype=torch.long, device=device), span.num_tokens)
