"""The step's attention work in backend-neutral terms: which query rows attend which KV blocks.

Built once per step from the metadata (and its shared-prefix levels, checked here); each
backend compiles it into its own index tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.kernels.metadata import AttentionMetadata


@dataclass(frozen=True, slots=True)
class KVSpan:
    """The first `num_tokens` tokens held by `blocks` (physical ids, in token order)."""

    blocks: tuple[int, ...]
    num_tokens: int


@dataclass(frozen=True, slots=True)
class LevelTask:
    """Decode rows of several sequences attend one shared span (non-causal)."""

    rows: tuple[int, ...]
    span: KVSpan


@dataclass(frozen=True, slots=True)
class SuffixTask:
    """One decode row attends what follows its deepest level (may be empty)."""

    row: int
    span: KVSpan


@dataclass(frozen=True, slots=True)
class PrefillTask:
    """Rows `first_row..first_row+num_rows` are the last tokens of `span`; causal."""

    first_row: int
    num_rows: int
    span: KVSpan


@dataclass
class StepPlan:
    prefills: list[PrefillTask]
    levels: list[LevelTask]
    suffixes: list[SuffixTask]  # one per decode row, in row order

    @property
    def decode_rows(self) -> list[int]:
        return [s.row for s in self.suffixes]


def step_plan_of(meta: AttentionMetadata) -> StepPlan:
    """The plan for this metadata, built on first use and cached in it."""
    plan = meta.compiled.get("step_plan")
    if plan is None:
        plan = _build(meta)
        meta.compiled["step_plan"] = plan
    return plan


def _build(meta: AttentionMetadata) -> StepPlan:
    bs = meta.block_size
    level_end = _check_levels(meta)
    prefills: list[PrefillTask] = []
    suffixes: list[SuffixTask] = []
    for i in range(meta.num_seqs):
        q_len, s_len, table = meta.query_lens[i], meta.seq_lens[i], meta.block_tables[i]
        row = meta.query_start[i]
        n_blocks = -(-s_len // bs)
        if q_len > 1:
            prefills.append(PrefillTask(row, q_len, KVSpan(tuple(table[:n_blocks]), s_len)))
            continue
        start = level_end.get(i, 0)
        suffixes.append(
            SuffixTask(row, KVSpan(tuple(table[start // bs : n_blocks]), s_len - start))
        )
    levels = [
        LevelTask(
            tuple(meta.query_start[s] for s in p.seqs),
            KVSpan(
                tuple(meta.block_tables[p.seqs[0]][p.start // bs : p.end // bs]), p.end - p.start
            ),
        )
        for p in meta.shared_prefixes
    ]
    return StepPlan(prefills, levels, suffixes)


def _check_levels(meta: AttentionMetadata) -> dict[int, int]:
    """Check the shared-prefix levels against the batch; returns each member's deepest end."""
    bs = meta.block_size
    spans: dict[int, list[tuple[int, int]]] = {}
    for n, p in enumerate(meta.shared_prefixes):
        where = f"shared_prefixes[{n}] (seqs={p.seqs}, start={p.start}, end={p.end})"
        if not p.seqs:
            raise ValueError(f"{where}: no sequences")
        if p.start % bs or p.end % bs or not 0 <= p.start < p.end:
            raise ValueError(f"{where}: need 0 <= start < end, both multiples of block size {bs}")
        first = p.seqs[0]
        for s in p.seqs:
            if not 0 <= s < meta.num_seqs or meta.query_lens[s] != 1:
                raise ValueError(f"{where}: sequence {s} is not a decoding sequence of this batch")
            if meta.seq_lens[s] < p.end:
                raise ValueError(f"{where}: sequence {s} has only {meta.seq_lens[s]} tokens")
            blocks = meta.block_tables[s][p.start // bs : p.end // bs]
            if blocks != meta.block_tables[first][p.start // bs : p.end // bs]:
                raise ValueError(f"{where}: sequences {first} and {s} hold different blocks")
            spans.setdefault(s, []).append((p.start, p.end))
    ends: dict[int, int] = {}
    for s, ranges in spans.items():
        ranges.sort()
        position = 0
        for start, end in ranges:
            if start != position:
                raise ValueError(
                    f"sequence {s}: shared-prefix levels must tile tokens from 0 without gaps "
                    f"or overlaps, got {ranges}"
                )
            position = end
        ends[s] = position
    return ends
