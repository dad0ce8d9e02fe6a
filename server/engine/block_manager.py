"""The KV block pool: reference counts, content hashes of full blocks, LRU reuse of freed ones.

Pure bookkeeping over block ids; the tensors live in the model runner.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence


class NoFreeBlocksError(RuntimeError):
    """Raised when the pool has no block left to hand out."""


# What a full block's content hash is chained from: the hash of the block before it; for a
# context's first block, its cache salt (a string, so never equal to a block's hash) or None.
ParentKey = int | str | None


def hash_block(parent_hash: ParentKey, token_ids: Sequence[int]) -> int:
    """Content hash of a full block: its tokens and everything before it (via the parent)."""
    return hash((parent_hash, tuple(token_ids)))


class BlockManager:
    """Hands out block ids and keeps freed full blocks findable by content until evicted.

    A block is in one of three states: in use (ref count > 0); free and cached (ref count 0,
    still registered under its hash, in LRU order); free and empty.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.ref_counts = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._key_of: list[tuple[ParentKey, tuple[int, ...]] | None] = [None] * num_blocks
        self._block_of_hash: dict[int, int] = {}
        self._free_empty: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # oldest first

    # ---- capacity -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (empty ones and evictable cached ones)."""
        return len(self._free_empty) + len(self._free_cached)

    @property
    def num_cached_free_blocks(self) -> int:
        return len(self._free_cached)

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free_blocks

    # ---- allocation -----------------------------------------------------------------------
    def allocate(self) -> int:
        """A block with ref count 1: an empty one first, else the least recently freed cached one."""
        if self._free_empty:
            block = self._free_empty.popleft()
        elif self._free_cached:
            block, _ = self._free_cached.popitem(last=False)
            self._forget_hash(block)
        else:
            raise NoFreeBlocksError("no free KV block")
        self.ref_counts[block] = 1
        return block

    def incref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            # A cached free block comes back into use: it must no longer be evictable.
            self._free_cached.pop(block, None)
        self.ref_counts[block] += 1

    def decref(self, block: int) -> None:
        count = self.ref_counts[block]
        if count <= 0:
            raise RuntimeError(f"block {block} freed more often than referenced")
        self.ref_counts[block] = count - 1
        if count == 1:
            if self._hash_of[block] is not None:
                self._free_cached[block] = None
            else:
                self._free_empty.append(block)

    def free_blocks(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block, the last ones first so that tails are evicted first."""
        for block in reversed(blocks):
            self.decref(block)

    # ---- prefix cache ---------------------------------------------------------------------
    def lookup(self, parent_hash: ParentKey, token_ids: Sequence[int]) -> int | None:
        """The cached block holding exactly these tokens after this parent, if any."""
        if not self.enable_prefix_cache:
            return None
        h = hash_block(parent_hash, token_ids)
        block = self._block_of_hash.get(h)
        if block is None or self._key_of[block] != (parent_hash, tuple(token_ids)):
            return None
        return block

    def register(self, block: int, parent_hash: ParentKey, token_ids: Sequence[int]) -> int:
        """Record a full block's content; returns its hash. First registration of a content wins."""
        h = hash_block(parent_hash, token_ids)
        if not self.enable_prefix_cache or self._hash_of[block] is not None:
            return h
        if h not in self._block_of_hash:
            self._block_of_hash[h] = block
            self._hash_of[block] = h
            self._key_of[block] = (parent_hash, tuple(token_ids))
        return h

    def unregister(self, block: int) -> None:
        """Forget the content of a block in use (it is about to be overwritten in place); freed,
        it goes back empty."""
        self._forget_hash(block)

    def is_cached(self, block: int) -> bool:
        return self._hash_of[block] is not None

    def _forget_hash(self, block: int) -> None:
        h = self._hash_of[block]
        if h is not None:
            if self._block_of_hash.get(h) == block:
                del self._block_of_hash[h]
            self._hash_of[block] = None
            self._key_of[block] = None
