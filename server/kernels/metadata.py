"""What one model step tells the attention kernels about its batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from server.kernels.cascade_config import CascadeConfig
from server.kernels.prefix_groups import plan_shared_prefixes
from server.kernels.shared_prefix import SharedPrefix

__all__ = ["AttentionMetadata", "SharedPrefix", "build_attention_metadata"]


@dataclass
class AttentionMetadata:
    """Per-step batch layout, built once per step and read by every layer.

    Sequences appear in the batch in the order of their query tokens: sequence i owns query
    rows `query_start[i]:query_start[i + 1]`, and its KV length after this step is `seq_lens[i]`
    (the new tokens are its last `query_lens[i]` positions). `compiled` caches what the
    backends derive from this layout (index tensors, work lists) on the first layer, so the
    other layers reuse it.
    """

    block_size: int
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token's K/V
    shared_prefixes: list[SharedPrefix] = field(default_factory=list)
    query_start: list[int] = field(default_factory=list)
    backend: str | None = None  # the kernel backend by name (None: the device's default)
    compiled: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.query_lens) == len(self.seq_lens) == len(self.block_tables)):
            raise ValueError(
                "query_lens, seq_lens and block_tables must have one entry per sequence"
            )
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
    cascade_config: CascadeConfig | None = None,
    backend: str | None = None,
) -> AttentionMetadata:
    """Lay out one step's batch; with `cascade`, plan shared-prefix levels among decodes.

    A sequence with one query token is a decode; its blocks that lie wholly before that token
    may join a level (blocks written in this step never do). Levels follow `cascade_config`'s
    cost rule, by default the one measured for `backend` (when named: the kernel every layer
    then uses) or for `device`'s default backend.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    slots: list[int] = []
    shareable: list[int] = []
    for i, (q_len, s_len, table) in enumerate(zip(query_lens, seq_lens, block_tables, strict=True)):
        if q_len < 1 or s_len < q_len:
            raise ValueError(
                f"sequence {i}: need 1 <= query_len <= seq_len, got query_len={q_len}, "
                f"seq_len={s_len}"
            )
        if len(table) * block_size < s_len:
            raise ValueError(
                f"sequence {i}: block table has {len(table)} blocks of {block_size}, "
                f"too few for seq_len={s_len}"
            )
        for pos in range(s_len - q_len, s_len):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
        shareable.append((s_len - 1) // block_size if q_len == 1 else 0)
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    tables = [list(t) for t in block_tables]
    meta = AttentionMetadata(
        block_size, list(query_lens), list(seq_lens), tables, slot_mapping, backend=backend
    )
    if cascade:
        rule = cascade_config or (
            CascadeConfig.for_backend(backend) if backend else CascadeConfig.for_device(device)
        )
        meta.shared_prefixes = plan_shared_prefixes(tables, shareable, block_size, rule)
    return meta
