"""Shared prefix contexts on a real (tiny) engine: fills that race for one key, and waiters that
leave, hold no context or reference afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.engine_driver import EngineDriver
from server.engine_pool import EnginePool
from server.metrics import Metrics
from server.prefix_contexts import PrefixContexts
from server.prefix_store import PrefixStoreConfig

BASE = list(range(3, 400))  # long enough that its fill is still running when the others come
DEEPER = BASE + list(range(3, 40))


@pytest.fixture
async def prefixes(tiny_llama_path: Path) -> AsyncIterator[PrefixContexts]:
    driver = await EngineDriver.load(
        str(tiny_llama_path), "cpu", None, block_size=16, num_kv_blocks=64
    )
    pool = EnginePool([driver])
    await pool.start()
    try:
        yield PrefixContexts(pool, PrefixStoreConfig(), Metrics())
    finally:
        await pool.stop()


async def _contexts(prefixes: PrefixContexts) -> int:
    """Contexts the engine holds, once the commands sent so far are applied."""
    return (await prefixes.pool.primary.stats()).contexts


async def _filling_base(prefixes: PrefixContexts) -> asyncio.Task:
    fill = asyncio.create_task(prefixes.open(0, "base", BASE, 0))
    await asyncio.sleep(0)  # stored, and its fill posted
    return fill


async def test_fills_of_one_key_that_wait_for_one_base_store_it_once(
    prefixes: PrefixContexts,
) -> None:
    """Two early fills of one leading text (a map stage's calls, once their shared document is
    in) fork the same stored prefix still being filled (the system prompt before it): both
    waited for it, and the second then stored the key the first had just stored. The store
    refused it (KeyError): the fill crashed and the fork it had taken of the base was never
    freed (an engine context and its KV blocks, for good)."""
    base_fill = await _filling_base(prefixes)
    base = prefixes.store.peek("base", 0)
    assert base is not None
    deeper = [asyncio.create_task(prefixes.open(0, "deeper", DEEPER, 0, base)) for _ in range(2)]
    await asyncio.sleep(0)
    assert not base.handle.filled.is_set()  # both wait for the base
    got = await asyncio.gather(*deeper, return_exceptions=True)
    entry = prefixes.store.peek("deeper", 0)
    assert got == [entry, entry]  # the second joined the first's fill
    assert entry is not None and entry.refs == 2
    for held in [await base_fill, *got]:
        prefixes.release(held)
    assert await _contexts(prefixes) == 2  # the base's and the deeper prefix's, no other
    prefixes.close()
    assert await _contexts(prefixes) == 0


async def test_a_waiter_that_leaves_gives_its_reference_back(prefixes: PrefixContexts) -> None:
    """A fill that finds its key being filled (by another session's call) waits for it,
    holding a reference. Cancelled meanwhile (its session closed), it kept the reference: the
    entry could never be evicted, by age or by size, and held its KV for good."""
    base_fill = await _filling_base(prefixes)
    waiter = asyncio.create_task(prefixes.open(0, "base", BASE, 0))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    entry = await base_fill
    prefixes.release(entry)
    assert entry.refs == 0
    prefixes.store.config = PrefixStoreConfig(ttl_s=1e-9)
    prefixes.expire()
    assert len(prefixes.store) == 0 and await _contexts(prefixes) == 0
