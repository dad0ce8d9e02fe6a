"""An admitted batch of calls that fails before its calls run: they fail (and what reads them),
nothing is left running or counted. Stand-in engines whose fills pass at once."""

from __future__ import annotations

import asyncio

import pytest

from server.engine_pool import EnginePool
from server.executor import Executor, ExecutorConfig
from server.graph import CallState, VariableState
from server.metrics import Metrics
from server.session import Session
from tests.server.gated_engine import GatedDriver, GatedEngine
from tests.server.graphs import map_reduce


def test_a_batch_whose_contexts_cannot_be_opened_fails_its_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only an engine's failure was caught while a batch opened its calls' contexts; any other
    error (a store that refused a prefix stored twice was one) ended the batch's task with the
    calls marked running: their readers waited to their timeouts, and the session, never idle,
    was never closed for idleness."""

    async def run() -> tuple[Session, Executor, EnginePool]:
        gate = asyncio.Event()
        gate.set()
        pool = EnginePool([GatedDriver(GatedEngine(gate))])  # type: ignore[list-item]
        executor = Executor(pool, Metrics(), ExecutorConfig(min_shared_prefix_tokens=4))

        def refused(*args: object) -> None:
            raise RuntimeError("the prefix cannot be forked")

        # the map calls, a task group, share "Summarize: text " and fork it
        monkeypatch.setattr(executor.prefixes, "fork", refused)
        session = Session("s", "token")
        session.graph = map_reduce(2)
        reading = asyncio.create_task(session.wait("final", timeout=30))
        executor.dispatch(session, [session.graph.calls[f"map{i}"] for i in range(2)])
        await asyncio.wait_for(reading, 5)
        return session, executor, pool

    session, executor, pool = asyncio.run(run())
    calls = session.graph.calls
    assert [calls[c].state for c in ("map0", "map1", "reduce")] == [CallState.FAILED] * 3
    assert "the prefix cannot be forked" in (session.graph.variables["sum0"].error or "")
    assert session.graph.variables["final"].state is VariableState.FAILED
    assert not executor._tasks and not executor._placed
    assert [(load.running_calls, load.queued_tokens) for load in pool.loads] == [(0, 0)]
    assert all(entry.refs == 0 for entry in executor.prefixes.store.entries())
