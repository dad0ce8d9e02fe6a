"""The CPU executor's per-step program: which calls each layer makes, on which cache blocks.

Compiled once per step from the backend-neutral plan (`step_plan.py`); every layer replays it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from server.kernels.cpu.paged_levels import LevelIndex, level_index
from server.kernels.step_plan import KVSpan, StepPlan


@dataclass(frozen=True, slots=True)
class SdpaConfig:
    """How decode KV is split between in-place reads and gathers.

    `min_inplace_blocks`: a contiguous run of at least this many blocks of a sequence's own KV is
    read in place (one extra call and merge part) instead of being gathered with the rest.
    `max_tail_padding`: rows whose gathered tails are batched into one call may pad up to this
    factor of their real tokens (1.0 batches only equal lengths, for kernels without masks).
    `paged_decode`: every decode row's own KV (what follows its shared-prefix levels) is
    attended by one call of the paged CPU decode kernel (server/kernels/cpu/paged_decode.c)
    instead of dense calls; used where that kernel supports the step (float32 CPU, head dim
    16, 32, 64 or 128) and the CPU suits it (`cpu.suited()`: AVX2 or AVX-512), else the dense
    calls.
    """

    min_inplace_blocks: int = 8
    max_tail_padding: float = 1.5
    paged_decode: bool = False

    def __post_init__(self) -> None:
        if self.min_inplace_blocks < 1:
            raise ValueError(f"min_inplace_blocks must be >= 1, got {self.min_inplace_blocks}")
        if self.max_tail_padding < 1.0:
            raise ValueError(f"max_tail_padding must be >= 1.0, got {self.max_tail_padding}")


@dataclass(slots=True)
class Source:
    """KV tokens to attend: a contiguous block run read in place, or gathered blocks."""

    first_block: int
    gather: torch.Tensor | None
    num_tokens: int


@dataclass(slots=True)
class LevelCall:
    q_index: torch.Tensor  # rows of qd.view(-1, D), ordered (kv head, sequence, q head in group)
    dest: torch.Tensor  # the same rows' places in the parts buffer viewed as [-1, D]
    source: Source


@dataclass(slots=True)
class RunCall:
    drow: int
    slot: int
    source: Source


@dataclass(slots=True)
class TailCall:
    rows: torch.Tensor | None  # decode rows (None: all of them, in order); their part slot is 0
    gather: torch.Tensor  # [rows * blocks_per_row] block ids
    num_tokens: int  # per row, padded
    valid: torch.Tensor | None  # [rows, num_tokens] bool, None when no row is padded
    masks: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)


@dataclass(slots=True)
class OwnCall:
    """Every decode row's own span at once, for the paged decode kernel (part slot 0)."""

    blocks: torch.Tensor  # int64, the rows' block lists one after another
    offsets: torch.Tensor  # int64 [rows + 1]
    num_tokens: torch.Tensor  # int64 [rows]


@dataclass(slots=True)
class PrefillCall:
    start: int
    end: int
    context: Source | None


@dataclass(slots=True)
class SdpaProgram:
    pure_decode: bool  # every row decodes, in row order
    dec_rows: torch.Tensor | None
    num_decode: int
    num_parts: int
    tails: list[TailCall]
    levels: list[LevelCall]
    runs: list[RunCall]
    prefills: list[PrefillCall]
    direct: TailCall | RunCall | None  # the one call that yields every decode row, if so
    own: OwnCall | None = None  # set instead of tails and runs when the paged kernel is used
    paged_levels: LevelIndex | None = None  # set instead of levels with `own` (decode rows)


def compile_program(
    plan: StepPlan, block_size: int, q: torch.Tensor, num_kv_heads: int, cfg: SdpaConfig
) -> SdpaProgram:
    """Index tensors and calls for the step; `q` gives the device and the query head count."""
    device, num_q_heads = q.device, q.shape[1]
    group = num_q_heads // num_kv_heads
    num_decode = len(plan.suffixes)
    parts_used = [0] * num_decode
    tail_rows: list[tuple[int, list[int], int]] = []
    own_runs: list[tuple[int, KVSpan]] = []
    own = None
    if num_decode and _paged_decode_fits(cfg, q, num_kv_heads):
        own = _own_call(plan)
        parts_used = [1] * num_decode
    else:
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
    levels: list[LevelCall] = []
    paged = None
    if own is not None and plan.levels and _paged_levels_fit(q, num_kv_heads):
        paged = level_index([
            ([drow_of[r] for r in level.rows], level.span.blocks, level.span.num_tokens)
            for level in plan.levels
        ])
    for level in plan.levels if paged is None else []:
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
            LevelCall(
                q_index.reshape(-1), dest.reshape(-1), _source(level.span, block_size, device)
            )
        )
    runs: list[RunCall] = []
    for d, span in own_runs:
        runs.append(RunCall(d, parts_used[d], _source(span, block_size, device)))
        parts_used[d] += 1
    tails = _tail_calls(tail_rows, num_decode, block_size, cfg.max_tail_padding, device)
    prefills = []
    for task in plan.prefills:
        context = task.span.num_tokens - task.num_rows
        source = None
        if context > 0:
            blocks = task.span.blocks[: -(-context // block_size)]
            source = _source(KVSpan(blocks, context), block_size, device)
        prefills.append(PrefillCall(task.first_row, task.first_row + task.num_rows, source))
    decode_rows = plan.decode_rows
    pure = not plan.prefills and decode_rows == list(range(num_decode))
    num_parts = max(parts_used, default=0)
    direct: TailCall | RunCall | None = None
    if pure and num_parts == 1 and not levels:
        if len(tails) == 1 and not runs and tails[0].rows is None:
            direct = tails[0]
        elif num_decode == 1 and not tails and len(runs) == 1:
            direct = runs[0]
    return SdpaProgram(
        pure_decode=pure,
        dec_rows=torch.tensor(decode_rows, dtype=torch.long, device=device),
        num_decode=num_decode,
        num_parts=num_parts,
        tails=tails,
        levels=levels,
        runs=runs,
        prefills=prefills,
        direct=direct,
        own=own,
        paged_levels=paged,
    )


def _paged_decode_fits(cfg: SdpaConfig, q: torch.Tensor, num_kv_heads: int) -> bool:
    if not cfg.paged_decode or q.device.type != "cpu" or q.dtype != torch.float32:
        return False
    from server.kernels.cpu import paged_decode, vector_width

    return (
        paged_decode.supports(q.shape[1], num_kv_heads, q.shape[2])
        and vector_width.suited()
        and paged_decode.available()
    )


def _paged_levels_fit(q: torch.Tensor, num_kv_heads: int) -> bool:
    from server.kernels.cpu import paged_levels, vector_width

    return (
        paged_levels.supports(q.shape[1], num_kv_heads, q.shape[2])
        and vector_width.suited()
        and paged_levels.available()
    )


def _own_call(plan: StepPlan) -> OwnCall:
    blocks: list[int] = []
    offsets = [0]
    for suffix in plan.suffixes:
        blocks.extend(suffix.span.blocks)
        offsets.append(len(blocks))
    return OwnCall(
        torch.tensor(blocks, dtype=torch.int64),
        torch.tensor(offsets, dtype=torch.int64),
        torch.tensor([s.span.num_tokens for s in plan.suffixes], dtype=torch.int64),
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
) -> list[TailCall]:
    """Batch gathered tails of similar length into padded calls."""
    calls: list[TailCall] = []
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
            TailCall(
                rows=None if in_order else torch.tensor(drows, dtype=torch.long, device=device),
                gather=torch.tensor(gather, dtype=torch.long, device=device),
                num_tokens=longest,
                valid=valid,
            )
        )
    return calls


def _source(span: KVSpan, block_size: int, device: torch.device) -> Source:
    blocks = span.blocks
    if all(b == a + 1 for a, b in zip(blocks, blocks[1:], strict=False)):
        return Source(blocks[0], None, span.num_tokens)
    return Source(-1, torch.tensor(blocks, dtype=torch.long, device=device), span.num_tokens)
