"""EngineCounters: engine counters summed over each engine's lives, never going down."""

from __future__ import annotations

from server.engine import EngineStats
from server.engine_counters import EngineCounters


def total(counters: EngineCounters) -> EngineStats:
    out = EngineStats()
    counters.add_to(out)
    return out


def test_a_restarted_engine_counts_on_from_its_last_life() -> None:
    counters = EngineCounters(2)
    first, second, restarted = object(), object(), object()
    counters.record(0, first, EngineStats(generated_tokens=100, steps=10, free_blocks=5))
    counters.record(1, second, EngineStats(generated_tokens=40, steps=4))
    assert (total(counters).generated_tokens, total(counters).steps) == (140, 14)
    # engine 0 died: unreadable, its counts stay
    counters.record(0, first, None)
    assert total(counters).generated_tokens == 140
    # restarted: a new engine object counting from 0
    counters.record(0, restarted, EngineStats(generated_tokens=3, steps=1))
    counters.record(1, second, EngineStats(generated_tokens=50, steps=5))
    assert (total(counters).generated_tokens, total(counters).steps) == (153, 16)
    # gauges are not summed over lives: they are the pool's state now
    assert total(counters).free_blocks == 0
    # a second restart carries the restarted life's last read too
    again = object()
    counters.record(0, again, EngineStats(generated_tokens=1))
    assert total(counters).generated_tokens == 100 + 3 + 1 + 50
