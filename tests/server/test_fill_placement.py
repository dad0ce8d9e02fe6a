"""Where a call's early (pipelined) fills and the call itself go with several engines, alone:
the placement rule and the early fills' engine, with no engine running."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace

from parrot_bridge.template import parse_template
from server.analysis import boundaries
from server.engine_pool import EnginePool
from server.executor import Executor, _estimated_tokens
from server.executor_config import ExecutorConfig
from server.graph import Call, CallState, Graph, Submission, VariableDecl
from server.metrics import Metrics
from server.scheduling import AppPolicy, CallScheduler, EngineLoad, WorkItem, choose_engine
from server.scheduling.scheduler import MAX_PASSED_OVER
from server.session import Session
from tests.server.gated_engine import GatedDriver, GatedEngine
from tests.server.graphs import decl

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


def test_later_work_takes_the_engines_a_unit_waiting_for_its_holder_declined() -> None:
    """A unit waiting for its full holder does not keep an idle engine idle: later units go
    there; the holder's next free slot is still the waiting unit's, even for a later unit that
    holds more of its own prompt there."""
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=1)
    for payload in ("filled-ahead", "other", "also-held", "third"):
        s.add(WorkItem(payload, 1, 50))
    holds = {"filled-ahead": {0: 600}, "other": {}, "also-held": {0: 900}, "third": {}}
    loads = [EngineLoad(0, 1, 300), EngineLoad(1, 0, 0)]
    got = s.admit(loads, lambda unit: holds[unit[0].payload])
    assert [(a.engine, a.items[0].payload) for a in got] == [(1, "other")] and len(s) == 3
    # engine 0 frees its slot, engine 1 is still busy: the first waiting unit takes it
    got = s.admit([EngineLoad(0, 0, 0), EngineLoad(1, 1, 50)], lambda u: holds[u[0].payload])
    assert [(a.engine, a.items[0].payload) for a in got] == [(0, "filled-ahead")]
    got = s.admit([EngineLoad(0, 0, 0), EngineLoad(1, 0, 0)], lambda u: holds[u[0].payload])
    assert [(a.engine, a.items[0].payload) for a in got] == [(0, "also-held"), (1, "third")]


def test_with_every_engine_full_admission_looks_no_further() -> None:
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=1)
    looked: list[str] = []

    def affinity(unit: list[WorkItem[str]]) -> dict[int, int]:
        looked.append(unit[0].payload)
        return {0: 600} if unit[0].payload.startswith("held") else {}

    for i in range(MAX_PASSED_OVER + 5):
        s.add(WorkItem(f"held{i}", 1, 50))
    s.add(WorkItem("free", 1, 50))
    assert s.admit([EngineLoad(0, 1, 300), EngineLoad(1, 1, 300)], affinity) == []
    assert looked == []
    # engine 1 has room: the pass looks past at most MAX_PASSED_OVER waiting units
    assert s.admit([EngineLoad(0, 1, 300), EngineLoad(1, 0, 290)], affinity) == []
    assert len(looked) == MAX_PASSED_OVER and len(s) == MAX_PASSED_OVER + 6


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


def _pool(engines: int) -> tuple[EnginePool, list[GatedEngine]]:
    """A real pool (its loads and least-loaded rule) over stand-in engines sharing one gate."""
    gate = asyncio.Event()
    stand_ins = [GatedEngine(gate) for _ in range(engines)]
    return EnginePool([GatedDriver(e) for e in stand_ins]), stand_ins  # type: ignore[misc]


def _waiting_map(n: int, one_document: bool = False, reduce: bool = False) -> Graph:
    """A map stage: call i reads its own long document (in; or all the same one) and a question
    (not in yet, from call `ask`), so each call's document is filled early; with `reduce`, one
    call reads all their answers (the map calls are then a task group)."""
    g = Graph()
    docs = [VariableDecl(f"doc{i}", value=f"document {i} " + "words " * 50) for i in range(n)]
    outs = [VariableDecl(f"a{i}") for i in range(n)]
    calls = [decl("ask", "Ask:{{output:q}}", {}, {"q": "q"})]
    calls += [
        decl(f"map{i}", "Read: {{input:d}}\nQuestion: {{input:q}}\nAnswer:{{output:a}}",
             {"d": "doc0" if one_document else f"doc{i}", "q": "q"}, {"a": f"a{i}"})
        for i in range(n)
    ]  # fmt: skip
    if reduce:
        template = "".join(f"{{{{input:a{i}}}}}" for i in range(n)) + "{{output:r}}"
        calls.append(decl("reduce", template, {f"a{i}": f"a{i}" for i in range(n)}, {"r": "r"}))
        outs.append(VariableDecl("r"))
    g.submit(Submission(variables=[*docs, VariableDecl("q"), *outs], calls=calls, awaits={}))
    return g


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _scanned(graph: Graph) -> tuple[EnginePool, list[GatedEngine], Executor, Session]:
    """A session of `graph` on two gated stand-in engines, scanned once: its early fills
    started and waiting at the gate."""
    pool, engines = _pool(2)
    executor = Executor(pool, Metrics(), ExecutorConfig())
    session = Session("s", "token")
    session.graph = graph
    executor._scan(session)
    await _settle()
    return pool, engines, executor, session


def _queued(pool: EnginePool) -> list[int]:
    return [load.queued_tokens for load in pool.loads]


def test_a_burst_of_early_fills_spreads_over_the_engines() -> None:
    """The early fills of a map stage's documents counted as no load: all of them went to the
    engine least loaded when the scan ran, and the calls followed them there."""

    async def run() -> tuple[list[GatedEngine], list[int], EnginePool]:
        pool, engines, executor, session = await _scanned(_waiting_map(4))
        pending = _queued(pool)
        engines[0].gate.set()
        await _settle()
        return engines, pending, pool

    engines, pending, pool = asyncio.run(run())
    assert [len(e.started) for e in engines] == [2, 2]
    assert pending == [sum(e.started) for e in engines]  # counted while they run
    assert _queued(pool) == [0, 0]  # and no longer once done
    assert [load.running_calls for load in pool.loads] == [0, 0]  # a fill takes no call slot


def test_the_early_fills_of_a_task_group_go_to_one_engine() -> None:
    """A task group runs on one engine, placed by its first member's prefix: its members'
    fills spread by load would be computed again where the group runs."""

    async def run() -> list[GatedEngine]:
        pool, engines, executor, session = await _scanned(_waiting_map(4, reduce=True))
        assert executor.plan(session).group("map0") is not None
        engines[0].gate.set()
        await _settle()
        await executor.cancel_session(session.id)
        assert not executor._group_fill_engines  # forgotten with its session
        return engines

    engines = asyncio.run(run())
    assert sorted(len(e.started) for e in engines) == [0, 4]


def test_early_fills_of_one_leading_text_go_to_one_engine_and_count_once() -> None:
    """Calls reading one document each spawn its fill in one scan, before any is stored: spread
    by load, each engine would compute it; on one, the later fills wait for the first."""

    async def run() -> tuple[list[GatedEngine], list[int], EnginePool]:
        pool, engines, executor, session = await _scanned(_waiting_map(4, one_document=True))
        pending = _queued(pool)
        engines[0].gate.set()
        await _settle()
        assert not executor._fills_by_key and not executor._fill_loads
        return engines, pending, pool

    engines, pending, pool = asyncio.run(run())
    assert [len(e.started) for e in engines] == [1, 0]
    assert pending == [engines[0].started[0], 0]
    assert _queued(pool) == [0, 0]


def test_a_call_admitted_onto_its_running_early_fill_counts_its_prompt_once() -> None:
    """The question comes while the document is still being filled: the call goes to the
    fill's engine and waits for it there; its cost counts its whole prompt, so the fill's
    tokens stop counting then. Once all is done, no load is left."""

    async def run() -> None:
        pool, engines, executor, session = await _scanned(_waiting_map(1))
        assert _queued(pool) == [engines[0].started[0], 0]
        session.graph.start("ask")
        ready = session.complete_output("ask", "q", "what is it about?")
        executor.dispatch(session, ready)
        await _settle()
        assert session.graph.calls["map0"].state is CallState.RUNNING
        # admitted there, waiting for the fill: only the call's own estimate counts
        cost = _estimated_tokens(session.graph.calls["map0"], session)
        assert _queued(pool) == [cost, 0]
        assert [load.running_calls for load in pool.loads] == [1, 0]
        engines[0].gate.set()
        await _settle()
        assert session.graph.calls["map0"].state is CallState.DONE
        assert _queued(pool) == [0, 0] and [x.running_calls for x in pool.loads] == [0, 0]
        assert not executor._fill_loads and not executor._placed

    asyncio.run(run())


def test_a_cancelled_early_fill_gives_its_load_back() -> None:
    async def run() -> None:
        pool, engines, executor, session = await _scanned(_waiting_map(3))
        assert sum(_queued(pool)) == sum(sum(e.started) for e in engines) > 0
        await executor.cancel_session("s")
        assert _queued(pool) == [0, 0] and not executor._fill_loads

    asyncio.run(run())
