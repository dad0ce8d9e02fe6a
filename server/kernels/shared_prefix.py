"""One shared-prefix (cascade) level: sequences that hold the same leading KV blocks."""

from __future__ import annotations

from dataclasses import dataclass


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
