"""Where a call's early (pipelined) fills and the call itself go with several engines, alone:
the placement rule and the early fills' engine, with no engine running."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from parrot_bridge.template import parse_template
from server.analysis import boundaries
from server.executor import Executor
from server.executor_config import ExecutorConfig
from server.graph import Call
from server.metrics import Metrics
from server.scheduling import AppPolicy, CallScheduler, EngineLoad, WorkItem, choose_engine

FULL = 4  # calls per engine


def test_a_unit_waits_for_its_full_holder_when_its_prefix_outweighs_the_load_gap() -> None:
    # engine 0 holds 600 tokens of the prompt (filled ahead) and is full; engine 1 has one
    # slot and little less work: computing the 600 tokens again there costs more than waiting
    loads = [EngineLoad(0, FULL, 1000), EngineLoad(1, FULL - 1, 800)]
    assert choose_engine(loads, {0: 600}, max_calls=FULL) is None
    # the holder frees a slot: the unit goes there
    loads[0].running_calls -= 1
    assert choose_engine(loads, {0: 600}, max_calls=FULL) == 0


def test_a_unit_leaves_its_full_holder_for_an_engine_much_less_loaded() -> None:
    loads = [EngineLoad(0, FULL, 1000), EngineLoad(1, 1, 300)]
    assert choose_engine(loads, {0: 600}, max_calls=FULL) == 1  # 700 tokens less work
    assert choose_engine(loads, {0: 701}, max_calls=FULL) is None
    # what the other engine holds of the prompt counts for it: only the rest is computed again
    assert choose_engine(loads, {0: 701, 1: 200}, max_calls=FULL) == 1


def test_nothing_held_or_a_free_holder_is_placed_as_before() -> None:
    # the least loaded engine is full and holds nothing: no reason to wait for it
    loads = [EngineLoad(0, FULL, 100), EngineLoad(1, 1, 900)]
    assert choose_engine(loads, {}, max_calls=FULL) == 1
    # a holder with room wins however busy it is
    loads = [EngineLoad(0, FULL - 1, 5000), EngineLoad(1, 0, 0)]
    assert choose_engine(loads, {0: 10}, max_calls=FULL) == 0
    assert choose_engine([EngineLoad(0, FULL)], {0: 10}, max_calls=FULL) is None


def test_the_queue_waits_behind_a_unit_waiting_for_its_holder() -> None:
    """Later work does not overtake it (it would take the slot freed on the holder too)."""
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=1)
    s.add(WorkItem("filled-ahead", 1, 50))
    s.add(WorkItem("other", 1, 50))
    holds = {"filled-ahead": {0: 600}, "other": {}}
    loads = [EngineLoad(0, 1, 300), EngineLoad(1, 0, 0)]
    assert s.admit(loads, lambda unit: holds[unit[0].payload]) == [] and len(s) == 2
    got = s.admit([EngineLoad(0, 0, 0), EngineLoad(1, 0, 0)], lambda u: holds[u[0].payload])
    assert [(a.engine, a.items[0].payload) for a in got] == [(0, "filled-ahead"), (1, "other")]


def _executor(loads: list[EngineLoad]) -> Executor:
    """An executor over a stand-in pool of these loads (no engine: only placement runs)."""
    pool = SimpleNamespace(
        primary=None,
        snapshot=lambda: [EngineLoad(x.index, x.running_calls, x.queued_tokens) for x in loads],
        least_loaded=lambda: min(loads, key=lambda x: (x.queued_tokens, x.index)).index,
    )
    return Executor(pool, Metrics(), ExecutorConfig())  # type: ignore[arg-type]


def test_a_deeper_early_fill_goes_to_the_engine_of_the_shallower_one() -> None:
    """A call's early fill of its head, then (once its first input is in) the deeper fill of
    its head, that input and the text after it: both on one engine, the deeper one forking the
    first, however much busier that engine is now."""
    call = Call("ask", parse_template("Head text.\n{{input:a}}\nMore text.\n{{input:b}}"
                                      "{{output:o}}"), {"a": "a", "b": "b"}, {"o": "o"})  # fmt: skip
    first = boundaries(call, {"a": None, "b": None})
    deeper = boundaries(call, {"a": "an input", "b": None})
    assert [b.key for b in deeper[: len(first)]] == [b.key for b in first]
    busy, idle = EngineLoad(0, 300, 90_000), EngineLoad(1, 0, 0)
    executor = _executor([busy, idle])
    assert executor._early_fill_engine(first[:-1]) == 1  # nothing held: the least loaded
    executor.prefixes.store.put(first[-1].key, 0, None, 40)  # the first fill, on engine 0
    assert executor._early_fill_engine(deeper[:-1]) == 0
    # and the call, once ready, goes there too while engine 0 has room
    ready = boundaries(call, {"a": "an input", "b": "another"})
    affinity = executor.prefixes.affinity(ready)
    assert choose_engine([busy, idle], affinity, max_calls=sys.maxsize) == 0
