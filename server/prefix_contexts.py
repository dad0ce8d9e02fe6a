"""Engine contexts holding shared prompt prefixes, kept in the global `PrefixStore`.

A prefix is filled once on one engine (forked from a shallower stored prefix when there is one)
and calls fork from it. An entry is referenced while it is filled and while calls forked from it
run; then it stays cached until evicted (least recently used, or unused for its time to live).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.analysis import Boundary
from server.engine import EngineError
from server.engine_driver import TokenContext
from server.engine_pool import EnginePool
from server.log import log_event
from server.metrics import Metrics
from server.prefix_store import PrefixEntry, PrefixStore, PrefixStoreConfig
from server.token_prefix import common_prefix_len

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class PrefixContext:
    """A context filled (or being filled) with a prefix; `ok` once its KV is computed.
    `priority`: its fill's engine priority, raised to that of the most urgent waiter."""

    ctx: TokenContext
    priority: int
    pipelined: bool = False
    ok: bool = False
    filled: asyncio.Event = field(default_factory=asyncio.Event)


class PrefixContexts:
    def __init__(self, pool: EnginePool, config: PrefixStoreConfig, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.store: PrefixStore[PrefixContext] = PrefixStore(config, self._evicted)

    def affinity(self, bounds: Sequence[Boundary]) -> dict[int, int]:
        """Each engine holding a stored boundary of a prompt, and how many tokens its deepest
        one has. Every holder counts, not only those of the deepest boundary: when they are
        full, the call goes to an engine holding a shallower prefix (a shared system prompt)
        before one that holds none."""
        depth = {boundary.key: i for i, boundary in enumerate(bounds)}
        deepest: dict[int, tuple[int, int]] = {}  # engine -> (boundary index, tokens)
        for entry in self.store.entries():  # one pass: keys times entries cost a reduce dearly
            i = depth.get(entry.key)
            if i is not None and i > deepest.get(entry.engine, (-1, 0))[0]:
                deepest[entry.engine] = (i, entry.num_tokens)
        return {engine: tokens for engine, (_, tokens) in deepest.items()}

    def deepest(self, bounds: Sequence[Boundary], engine: int) -> tuple[int, PrefixEntry] | None:
        """(index into `bounds`, entry) of the deepest boundary stored on `engine`, filled or
        being filled (see `filled`)."""
        for i in range(len(bounds) - 1, -1, -1):
            entry = self.store.peek(bounds[i].key, engine)
            if entry is not None:
                return i, entry
        return None

    async def filled(self, entry: PrefixEntry, priority: int) -> bool:
        """Wait until an entry's fill ends (waiting beats computing it again); True if it holds
        its prefix. The fill runs at the waiter's `priority` at the latest."""
        if not entry.handle.filled.is_set():
            self._boost(entry, priority)
            self.store.acquire(entry)
            try:
                await entry.handle.filled.wait()
            finally:
                self.store.release(entry)
        return entry.handle.ok

    def holds(self, key: str) -> bool:
        return bool(self.store.engines_holding(key))

    async def open(
        self,
        engine: int,
        key: str,
        tokens: Sequence[int],
        priority: int,
        base: PrefixEntry | None = None,
        pipelined: bool = False,
        yield_tokens: int | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> PrefixEntry | None:
        """The filled entry for `key` on `engine`, referenced for the caller (who releases it);
        filled now from `tokens` when it is not stored. None when the fill failed, or when
        `wanted` (asked once `base` is filled, before filling) says it is no longer needed.
        `yield_tokens`: see `LLMEngine.fill` (for fills ahead of need)."""
        entry = self.store.get(key, engine)
        if entry is not None:
            return await self._join(entry, priority)
        ctx = await self._fork_base(base, priority) if base is not None else None
        if wanted is not None and not wanted():
            # not stored while it waited for its base, so nobody forks it or waits for it
            if ctx is not None:
                ctx.close()
            return None
        # Another fill of the key (an early fill of the same leading text, forking the same
        # base) may have been stored while this one waited for its base: it is joined. Stored
        # again, the store refused it and the fork taken of the base was never freed.
        entry = self.store.get(key, engine)
        if entry is not None:
            if ctx is not None:
                ctx.close()
            return await self._join(entry, priority)
        if ctx is None:
            ctx = self.pool.drivers[engine].new_context()
        handle = PrefixContext(ctx, priority, pipelined)
        entry = self.store.put(key, engine, handle, len(tokens))
        self.metrics.prefix_store_entries.set(len(self.store))
        try:
            # posted in this turn of the event loop, so a waiter's boost (posted later) finds
            # the fill's job
            result = await ctx.fill_to(tokens, priority, yield_tokens)
            handle.ok = True
        except (ValueError, EngineError) as exc:
            log_event(log, "prefix_fill_failed", logging.WARNING, key=key, error=str(exc))
            self._drop(entry)
            return None
        except BaseException:
            self._drop(entry)
            raise
        finally:
            handle.filled.set()
        self.metrics.prefix_fills.inc()
        self.metrics.prefix_fill_tokens.inc(result.filled)
        if pipelined:
            self.metrics.pipelined_prefill_tokens.inc(result.filled)
        return entry

    def fork(self, entry: PrefixEntry, prompt: Sequence[int]) -> TokenContext:
        """A context for a call whose prompt is `prompt`, forked from a filled entry."""
        handle: PrefixContext = entry.handle
        child = handle.ctx.fork()
        kept = common_prefix_len(child.tokens, prompt)
        if entry.uses > 0 or handle.pipelined:
            # a later fork, or the first one of a prefix computed before its call was ready
            self.metrics.prefix_hits.inc()
        if entry.uses > 0:
            # the fill counted its tokens once (computed, or found in the prefix cache) for its
            # first fork, pipelined or not: only the later forks reuse them
            self.metrics.fork_cached_tokens.inc(kept)
        if handle.pipelined:
            self.metrics.pipelined_prefix_uses.inc()
        entry.uses += 1
        return child

    def acquire(self, entry: PrefixEntry) -> None:
        self.store.acquire(entry)

    def release(self, entry: PrefixEntry) -> None:
        self.store.release(entry)
        self.metrics.prefix_store_entries.set(len(self.store))

    def expire(self) -> None:
        """Evict the entries unused past their time to live (the store also does this lazily,
        on its next use: a quiet server would keep their KV until then)."""
        self.store.expire()
        self.metrics.prefix_store_entries.set(len(self.store))

    def drop_engine(self, engine: int) -> None:
        """Forget the prefixes on an engine that died: calls must not fork its contexts."""
        dropped = self.store.discard_engine(engine)
        self.metrics.prefix_store_entries.set(len(self.store))
        if dropped:
            log_event(log, "prefixes_dropped", engine=engine, entries=dropped)

    def close(self) -> None:
        self.store.clear()
        self.metrics.prefix_store_entries.set(0)

    async def _fork_base(self, base: PrefixEntry, priority: int) -> TokenContext | None:
        """A fork of `base` once filled; None if its fill failed or it is no longer stored. A
        base is picked before the fill that forks it runs, and meanwhile an unreferenced entry
        may be evicted (its context closed): it is referenced until forked."""
        if not self._stored(base):
            return None
        self.store.acquire(base)
        try:
            if await self.filled(base, priority) and self._stored(base):
                return base.handle.ctx.fork()
            return None
        finally:
            self.store.release(base)

    async def _join(self, entry: PrefixEntry, priority: int) -> PrefixEntry | None:
        """`entry`, referenced for the caller once its fill (by another) holds its prefix; None
        if that fill failed. A caller that leaves while it waits gives its reference back, or
        the entry could never be evicted."""
        self.store.acquire(entry)
        try:
            if not entry.handle.filled.is_set():
                self._boost(entry, priority)
                await entry.handle.filled.wait()
        except BaseException:
            self.release(entry)
            raise
        if entry.handle.ok:
            return entry
        self.release(entry)
        return None

    def _boost(self, entry: PrefixEntry, priority: int) -> None:
        """A waiter more urgent than the fill it waits on raises the fill to its priority:
        else a latency-critical call forking a prefix that a fill ahead of need computes waits
        behind all the work that fill yields to (starved under steady latency load)."""
        handle: PrefixContext = entry.handle
        if priority < handle.priority:
            handle.priority = priority
            handle.ctx.boost(priority)

    def _stored(self, entry: PrefixEntry) -> bool:
        return self.store.peek(entry.key, entry.engine) is entry

    def _drop(self, entry: PrefixEntry) -> None:
        entry.refs -= 1
        self.store.discard(entry)
        self.metrics.prefix_store_entries.set(len(self.store))

    def _evicted(self, handle: PrefixContext) -> None:
        handle.ctx.close()
