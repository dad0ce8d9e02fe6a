"""Engine counters summed over each engine's lives, so that they never go down.

An engine in a child process that dies is restarted with its counters at 0. Summing only what
the engines report made `/metrics` counters fall at each restart, which Prometheus reads as a
reset of the whole series (`rate()` then spikes). Each engine's count goes on instead from what
its past lives were last seen to hold (work done between that read and the death is not seen).
"""

from __future__ import annotations

import dataclasses

from server.engine import EngineStats

# the pool's state now, not counts since the start: of the engines that run only
GAUGES = frozenset({"free_blocks", "total_blocks", "contexts", "jobs"})
COUNTERS = tuple(f.name for f in dataclasses.fields(EngineStats) if f.name not in GAUGES)


class EngineCounters:
    """Per engine, its past lives' counters (as last read) and its current life's last read."""

    def __init__(self, engines: int) -> None:
        self._life: list[object | None] = [None] * engines
        self._last = [EngineStats() for _ in range(engines)]
        self._past = [EngineStats() for _ in range(engines)]

    def record(self, index: int, life: object, stats: EngineStats | None) -> None:
        """What engine `index` reported now (None: it could not be read), `life` being the
        engine object it came from: a new one is a restart, and the last read is carried."""
        if life is not self._life[index]:
            _add(self._past[index], self._last[index], COUNTERS)
            self._last[index] = EngineStats()
            self._life[index] = life
        if stats is not None:
            self._last[index] = stats

    def add_to(self, total: EngineStats) -> None:
        """Add every engine's counters, over all its lives, to `total`."""
        for past, last in zip(self._past, self._last, strict=True):
            _add(total, past, COUNTERS)
            _add(total, last, COUNTERS)


def add_gauges(total: EngineStats, stats: EngineStats) -> None:
    _add(total, stats, GAUGES)


def _add(total: EngineStats, stats: EngineStats, names: tuple[str, ...] | frozenset[str]) -> None:
    for name in names:
        setattr(total, name, getattr(total, name) + getattr(stats, name))
