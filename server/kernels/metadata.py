"""What one model step tells the attention kernels about its batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SharedPrefix:
    """A run of KV blocks that several decoding sequences hold in common.

    `seqs` are batch indices; tokens `[start, end)` of each of them live in the same physical
    blocks (`start` and `end` are multiples of the block size). Levels of one sequence are
    contiguous from token 0; what follows the deepest level is the sequence's own suffix.
    """

    seqs: tuple[int, ...]
    start: int
    end: int


@dataclass
class AttentionMetadata:
    """Per-step batch layout, built once per step and read by every layer.

    Sequences appear in the batch in the order of their query tokens: sequence i owns query
    rows `query_start[i]:query_start[i + 1]`, and its KV length after this step is `seq_lens[i]`
    (the new tokens are its last `query_lens[i]` positions).
    """

    block_size: int
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token's K/V
    shared_prefixes: list[SharedPrefix] = field(default_factory=list)
    query_start: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (len(self.query_lens) == len(self.seq_lens) == len(self.block_tables)):
            raise ValueError("query_lens, seq_lens and block_tables must have one entry per sequence")
        if not self.query_start:
            starts = [0]
            for n in self.query_lens:
                starts.append(starts[-1] + n)
            self.query_start = starts

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return self.query_start[-1]


def build_attention_metadata(
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device | str = "cpu",
    cascade: bool = True,
) -> AttentionMetadata:
    """Lay out one step's batch; with `cascade`, plan shared-prefix groups among decodes."""
    slots: list[int] = []
    for q_len, s_len, table in zip(query_lens, seq_lens, block_tables, strict=True):
        for pos in range(s_len - q_len, s_len):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    meta = AttentionMetadata(block_size, list(query_lens), list(seq_lens), block_tables, slot_mapping)
    return meta
