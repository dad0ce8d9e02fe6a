"""The global store of prefix contexts, keyed by segment hash and engine. Pure, no I/O.

Each entry holds a handle (for the executor: an engine context filled with a prompt prefix).
Calls that share the entry's key fork from it. An entry stays while referenced; unreferenced
entries are evicted least recently used first when the store is over its size, and when they
were not used for longer than their time to live.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

H = TypeVar("H")


@dataclass(frozen=True, slots=True)
class PrefixStoreConfig:
    max_entries: int = 256
    ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ValueError(f"prefix store max_entries must be >= 1, got {self.max_entries}")
        if self.ttl_s <= 0:
            raise ValueError(f"prefix store ttl_s must be positive, got {self.ttl_s}")


@dataclass(eq=False, slots=True)
class PrefixEntry(Generic[H]):
    key: str
    engine: int
    handle: H
    num_tokens: int
    refs: int = 0
    uses: int = 0  # forks taken from it
    last_used: float = 0.0
    created: float = field(default=0.0)


class PrefixStore(Generic[H]):
    """Entries by (key, engine), in least-recently-used order."""

    def __init__(
        self,
        config: PrefixStoreConfig,
        on_evict: Callable[[H], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._on_evict = on_evict
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int], PrefixEntry[H]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, engine: int) -> PrefixEntry[H] | None:
        """The entry for `key` on `engine` (marked as just used), or None."""
        self.expire()
        entry = self._entries.get((key, engine))
        if entry is not None:
            self._touch(entry)
        return entry

    def peek(self, key: str, engine: int) -> PrefixEntry[H] | None:
        """The entry for `key` on `engine` without marking it used."""
        return self._entries.get((key, engine))

    def entries(self) -> list[PrefixEntry[H]]:
        """All entries, least recently used first (does not count as a use)."""
        return list(self._entries.values())

    def engines_holding(self, key: str) -> list[int]:
        """Engines with an entry for `key` (does not count as a use)."""
        return [engine for (k, engine) in self._entries if k == key]

    def put(self, key: str, engine: int, handle: H, num_tokens: int) -> PrefixEntry[H]:
        """Add an entry, referenced once by the caller; evicts others if over size."""
        if (key, engine) in self._entries:
            raise KeyError(f"prefix {key} is already stored on engine {engine}")
        now = self._clock()
        entry = PrefixEntry(key, engine, handle, num_tokens, refs=1, last_used=now, created=now)
        self._entries[(key, engine)] = entry
        self.expire()
        self._shrink(self.config.max_entries)
        return entry

    def acquire(self, entry: PrefixEntry[H]) -> None:
        entry.refs += 1
        self._touch(entry)

    def release(self, entry: PrefixEntry[H]) -> None:
        if entry.refs <= 0:
            raise RuntimeError(f"prefix {entry.key} released more often than acquired")
        entry.refs -= 1
        self._touch(entry)
        self._shrink(self.config.max_entries)

    def discard(self, entry: PrefixEntry[H]) -> None:
        """Drop an entry now (e.g. its fill failed), referenced or not."""
        if self._entries.get((entry.key, entry.engine)) is entry:
            del self._entries[(entry.key, entry.engine)]
            self._on_evict(entry.handle)

    def discard_engine(self, engine: int) -> int:
        """Drop every entry on `engine` now, referenced or not (the engine is gone, and its
        contexts with it); how many. Holders may still release theirs."""
        gone = [e for (_, on), e in self._entries.items() if on == engine]
        for entry in gone:
            self.discard(entry)
        return len(gone)

    def expire(self) -> None:
        """Evict unreferenced entries unused for longer than the time to live."""
        deadline = self._clock() - self.config.ttl_s
        for entry in [e for e in self._entries.values() if e.refs == 0 and e.last_used < deadline]:
            self._evict(entry)

    def clear(self) -> None:
        for entry in list(self._entries.values()):
            self._evict(entry)

    def _shrink(self, size: int) -> None:
        if len(self._entries) <= size:
            return
        for entry in [e for e in self._entries.values() if e.refs == 0]:  # oldest first
            if len(self._entries) <= size:
                return
            self._evict(entry)

    def _touch(self, entry: PrefixEntry[H]) -> None:
        entry.last_used = self._clock()
        if self._entries.get((entry.key, entry.engine)) is entry:  # else discarded while held
            self._entries.move_to_end((entry.key, entry.engine))

    def _evict(self, entry: PrefixEntry[H]) -> None:
        del self._entries[(entry.key, entry.engine)]
        self.evictions += 1
        self._on_evict(entry.handle)
