"""Block pool bookkeeping: reference counts, prefix hashes, LRU eviction. No model."""

import pytest

from server.engine.block_manager import BlockManager, NoFreeBlocksError, hash_block


def test_allocate_until_empty_then_error():
    bm = BlockManager(3, 4)
    blocks = [bm.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2]
    assert bm.num_free_blocks == 0
    with pytest.raises(NoFreeBlocksError):
        bm.allocate()


def test_refcounts_keep_shared_blocks_alive():
    bm = BlockManager(2, 4)
    b = bm.allocate()
    bm.incref(b)
    bm.decref(b)
    assert bm.num_free_blocks == 1
    bm.decref(b)
    assert bm.num_free_blocks == 2
    with pytest.raises(RuntimeError):
        bm.decref(b)


def test_hash_depends_on_parent_and_tokens():
    assert hash_block(None, [1, 2]) == hash_block(None, (1, 2))
    assert hash_block(None, [1, 2]) != hash_block(hash_block(None, [9]), [1, 2])
    assert hash_block(None, [1, 2]) != hash_block(None, [2, 1])


def test_freed_full_block_stays_findable_until_evicted():
    bm = BlockManager(2, 2)
    b = bm.allocate()
    h = bm.register(b, None, [5, 6])
    bm.decref(b)
    assert bm.lookup(None, [5, 6]) == b
    assert bm.lookup(h, [5, 6]) is None
    # reuse brings it back into use and out of the evictable set
    bm.incref(b)
    assert bm.num_cached_free_blocks == 0
    bm.decref(b)
    # the empty block goes first, then the cached one is evicted
    first = bm.allocate()
    assert first != b and bm.lookup(None, [5, 6]) == b
    second = bm.allocate()
    assert second == b and bm.lookup(None, [5, 6]) is None


def test_lru_evicts_least_recently_freed_and_tails_first():
    bm = BlockManager(3, 1)
    blocks = [bm.allocate() for _ in range(3)]
    parent = None
    for tok, b in zip([1, 2, 3], blocks, strict=False):
        parent = bm.register(b, parent, [tok])
    bm.free_blocks(blocks)  # tail freed first, so it is evicted first
    assert bm.allocate() == blocks[2]
    assert bm.allocate() == blocks[1]
    assert bm.lookup(None, [1]) == blocks[0]


def test_prefix_cache_off_finds_nothing():
    bm = BlockManager(2, 2, enable_prefix_cache=False)
    b = bm.allocate()
    bm.register(b, None, [1, 2])
    bm.decref(b)
    assert bm.lookup(None, [1, 2]) is None
    assert bm.num_cached_free_blocks == 0


def test_first_registration_wins_and_unregister_forgets():
    bm = BlockManager(3, 2)
    a, b = bm.allocate(), bm.allocate()
    bm.register(a, None, [1, 2])
    bm.register(b, None, [1, 2])
    assert bm.lookup(None, [1, 2]) == a
    assert not bm.is_cached(b)
    bm.unregister(a)
    assert bm.lookup(None, [1, 2]) is None
    bm.decref(a)  # freed, it is an empty block, not a cached one
    assert bm.num_cached_free_blocks == 0 and bm.num_free_blocks == 2
