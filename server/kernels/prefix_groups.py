"""Find shared-prefix (cascade) levels among decoding sequences from their block tables.

Pure bookkeeping over block ids: forks and the prefix cache make sequences hold the same
physical blocks at the start of their tables, which is exactly what can be attended once.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.kernels.cascade_config import CascadeConfig
from server.kernels.shared_prefix import SharedPrefix


def plan_shared_prefixes(
    block_tables: Sequence[Sequence[int]],
    shareable_blocks: Sequence[int],
    block_size: int,
    config: CascadeConfig,
) -> list[SharedPrefix]:
    """The levels worth attending once, parents before their nested levels.

    `shareable_blocks[i]` is how many leading blocks of sequence i may join a level (0 for a
    sequence that takes no part, such as a prefill). Sequences that share leading block ids form
    a group; where a group splits, each part of two or more sequences that goes on sharing forms
    a nested level. A level that fails the cost rule is not planned: its blocks are handed down
    to the nested levels, whose members share them too, or stay each sequence's own.
    """
    seqs = [i for i, n in enumerate(shareable_blocks) if n > 0]
    levels: list[SharedPrefix] = []
    # (members, first block they all share, first block not yet claimed by a planned level)
    stack = [(group, 0, 0) for group in reversed(_split_by_block(seqs, block_tables, 0))]
    while stack:
        members, depth, start = stack.pop()
        end = _common_end(members, block_tables, shareable_blocks, depth)
        if config.pays(len(members), (end - start) * block_size):
            levels.append(SharedPrefix(tuple(members), start * block_size, end * block_size))
            start = end
        going_on = [m for m in members if shareable_blocks[m] > end]
        for child in reversed(_split_by_block(going_on, block_tables, end)):
            stack.append((child, end, start))
    return levels


def _split_by_block(
    seqs: Sequence[int], block_tables: Sequence[Sequence[int]], position: int
) -> list[list[int]]:
    """Groups (of two or more) of the sequences holding the same block id at `position`."""
    by_block: dict[int, list[int]] = {}
    for s in seqs:
        by_block.setdefault(block_tables[s][position], []).append(s)
    return [group for group in by_block.values() if len(group) > 1]


def _common_end(
    members: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    shareable_blocks: Sequence[int],
    depth: int,
) -> int:
    """First block index at or after `depth` where the members stop sharing."""
    end = min(shareable_blocks[m] for m in members)
    first = block_tables[members[0]]
    for m in members[1:]:
        end = _first_mismatch(first, block_tables[m], depth, end)
    return end


def _first_mismatch(a: Sequence[int], b: Sequence[int], lo: int, hi: int) -> int:
    # Compare slices (C speed) and walk single ids only inside the slice that differs.
    step = 64
    i = lo
    while i < hi:
        j = min(i + step, hi)
        if list(a[i:j]) != list(b[i:j]):
            while a[i] == b[i]:
                i += 1
            return i
        i = j
    return hi
