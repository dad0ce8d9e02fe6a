"""Closing a session through the native API's `end_session`, on stand-in engines: what its
executor work may still start while its calls are being cancelled."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.api.native import end_session
from server.executor import Executor
from server.executor_config import ExecutorConfig
from server.graph import Graph, Submission, VariableDecl
from server.keys import EXECUTOR, METRICS, SESSIONS
from server.metrics import Metrics
from server.session_store import SessionStore
from tests.server.graphs import decl
from tests.server.test_fill_placement import _pool, _settle


def _inputs_one_by_one() -> Graph:
    """One call over a long document and two inputs set later: each input set fills deeper."""
    g = Graph()
    template = "Read: {{input:d}}\nTopic: {{input:t}}\nQuestion: {{input:q}}\nAnswer:{{output:a}}"
    call = decl("ask", template, {"d": "d", "t": "t", "q": "q"}, {"a": "a"})
    variables = [VariableDecl("d", value="words " * 60), VariableDecl("t"), VariableDecl("q"),
                 VariableDecl("a")]  # fmt: skip
    g.submit(Submission(variables=variables, calls=[call], awaits={}))
    return g


def test_a_scan_due_while_the_session_closes_starts_no_early_fill() -> None:
    """An input set just before the close schedules a scan; the close awaits its running fill's
    cancellation, and the scan ran in that gap: it started a deeper fill for the closing
    session, kept apart from the tasks already cancelled, so nothing ever stopped it."""

    async def run() -> tuple[list[int], int]:
        pool, engines = _pool(1)
        executor = Executor(pool, Metrics(), ExecutorConfig())
        app = web.Application()
        app[SESSIONS], app[EXECUTOR], app[METRICS] = SessionStore(), executor, Metrics()
        session, _ = app[SESSIONS].create()
        session.graph = _inputs_one_by_one()
        executor._scan(session)
        await _settle()
        assert len(engines[0].started) == 1  # the document's fill, waiting at the gate
        session.set_value("t", "parrots")
        executor._prefetch(session)  # as a PUT of the value does
        await end_session(app, session)
        await _settle()
        left = len(executor._tasks.get(session.id, ()))
        return engines[0].started, left

    started, left = asyncio.run(run())
    assert len(started) == 1 and left == 0
