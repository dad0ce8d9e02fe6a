"""`set()` of a variable that calls sent to the server already read: the value follows them there
(a stand-in server records what the SDK sends, in order)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aiohttp import web

import parrot_bridge as P
from parrot_bridge.pending_graph import PendingGraph
from tests.bridge.fake_server import (
    SESSION_ROUTES,
    FakeServer,
    Handler,
    json_answer,
    stream_then_stall,
)

VARIABLE = "/v1/sessions/s-1/variables/{var}"
WHY = "variable 'v-1' waits on variable 'v-2' (topic), which the client has not set (PUT ...)"


@P.semantic_function(max_tokens=4)
def echo(x):
    """Echo {{input:x}}:{{output:y}}"""


class Recorder:
    """The graph and PUT routes of session s-1, keeping what they were sent, in order."""

    def __init__(self, put_status: int = 200, graph_delay_s: float = 0.0) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.graph_arrived = threading.Event()
        self._put_status = put_status
        self._graph_delay_s = graph_delay_s

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {**SESSION_ROUTES, ("POST", "/v1/sessions/s-1/graph"): self._graph,
                ("PUT", VARIABLE): self._put}  # fmt: skip

    async def _graph(self, request: web.Request) -> web.StreamResponse:
        self.graph_arrived.set()
        await asyncio.sleep(self._graph_delay_s)
        self.sent.append(("graph", await request.json()))
        return web.json_response({})

    async def _put(self, request: web.Request) -> web.StreamResponse:
        self.sent.append((request.match_info["var"], (await request.json())["value"]))
        if self._put_status != 200:
            error = {"message": f"variable {request.match_info['var']!r} already has a value",
                     "type": "conflict_error", "code": "already_set"}  # fmt: skip
            return web.json_response({"error": error}, status=self._put_status)
        return web.json_response({})


def test_flush_sends_a_call_reading_an_unset_variable_and_set_then_puts_it() -> None:
    server = Recorder()
    with FakeServer(server.routes()) as url, P.Session(url) as session:
        topic = P.variable(name="topic")
        out = echo(topic)
        session.flush()
        [(_, body)] = server.sent
        assert [c["outputs"]["y"] for c in body["calls"]] == [out.id]
        assert {"id": topic.id, "name": "topic", "value": None} in body["variables"]
        topic.set("now")
        assert server.sent[1:] == [(topic.id, "now")] and topic.value == "now"
        echo(topic)  # a later call reads it: declared already, it is not sent again
        session.flush()
        assert topic.id not in [v["id"] for v in server.sent[2][1]["variables"]]
        with pytest.raises(P.ParrotError, match="already has a value"):
            topic.set("again")  # known here: refused before anything is sent


def test_a_variable_set_before_its_calls_are_sent_goes_with_them() -> None:
    server = Recorder()
    with FakeServer(server.routes()) as url, P.Session(url) as session:
        topic = P.variable(name="topic")
        echo(topic)
        topic.set("early")
        session.flush()
        [(_, body)] = server.sent
        assert {"id": topic.id, "name": "topic", "value": "early"} in body["variables"]


def test_set_while_the_submission_declaring_it_is_in_flight_puts_after_it() -> None:
    server = Recorder(graph_delay_s=0.3)
    with FakeServer(server.routes()) as url, P.Session(url) as session:
        topic = P.variable(name="topic")
        echo(topic)
        flusher = threading.Thread(target=session.flush)
        flusher.start()
        assert server.graph_arrived.wait(10)  # taken and sent: declared
        topic.set("now")
        flusher.join(10)
    assert [kind for kind, _ in server.sent] == ["graph", topic.id]


def test_a_value_the_server_refuses_raises_its_message_and_is_not_kept() -> None:
    server = Recorder(put_status=409)
    with FakeServer(server.routes()) as url, P.Session(url) as session:
        topic = P.variable(name="topic")
        echo(topic)
        session.flush()
        with pytest.raises(P.ParrotError, match=f"variable '{topic.id}' already has a") as e:
            topic.set("late")
        assert (e.value.status, e.value.code) == (409, "already_set")
        assert topic.value is None


async def test_aset_puts_from_async_code() -> None:
    server = Recorder()
    with FakeServer(server.routes()) as url:
        async with P.Session(url) as session:
            topic = P.variable(name="topic")
            echo(topic)
            await session.aflush()
            await topic.aset("async")
            assert server.sent[1:] == [(topic.id, "async")] and topic.value == "async"
            local = P.variable()
            await local.aset("here")  # in no session yet: kept here
            assert local.value == "here" and len(server.sent) == 2


def test_set_after_the_session_closed_keeps_the_value_on_the_client() -> None:
    server = Recorder()
    with FakeServer(server.routes()) as url:
        with P.Session(url) as session:
            topic = P.variable(name="topic")
            echo(topic)
            session.flush()
        topic.set("after")  # its calls are gone with the session: nothing to tell
        assert topic.value == "after" and [k for k, _ in server.sent] == ["graph"]


def test_reads_that_time_out_say_which_variable_the_client_has_not_set() -> None:
    pending = {"id": "v-1", "name": None, "status": "pending", "message": WHY}
    routes = {**SESSION_ROUTES, ("GET", VARIABLE): json_answer(pending),
              ("GET", VARIABLE + "/stream"): stream_then_stall}  # fmt: skip
    with FakeServer(routes) as url, P.Session(url, timeout=1) as session:
        out = echo.invoke(session, "x")
        with pytest.raises(P.ParrotError, match=r"timed out after 0.2 s .*: variable 'v-1' waits"):
            out.get(timeout=0.2)
        with pytest.raises(P.ParrotError, match=r"did not answer GET .*/stream within 1 s: var"):
            list(out.stream())


def test_a_read_waiting_on_a_variable_nobody_set_warns_at_once(caplog) -> None:
    pending = {"id": "v-1", "name": None, "status": "pending", "message": WHY}
    routes = {**SESSION_ROUTES, ("GET", VARIABLE): json_answer(pending),
              ("GET", VARIABLE + "/stream"): stream_then_stall}  # fmt: skip
    with FakeServer(routes) as url, P.Session(url, poll_s=0.05, timeout=1) as session:
        topic = P.variable(name="topic")
        out = echo(echo(topic))  # two calls away from the unset variable
        with caplog.at_level("WARNING", logger="parrot_bridge"), pytest.raises(P.ParrotError):
            out.get(timeout=0.3)  # several polls: one warning, before the first
        with caplog.at_level("WARNING", logger="parrot_bridge"), pytest.raises(P.ParrotError):
            list(out.stream())
        done = echo.invoke(session, "x")
        with caplog.at_level("WARNING", logger="parrot_bridge"), pytest.raises(P.ParrotError):
            done.get(timeout=0.1)  # waits on nothing unset: no warning
    warned = [r.getMessage() for r in caplog.records if r.name == "parrot_bridge"]
    said = f"variable {out._label} waits on variable {topic._label}, which has no value yet"
    assert len(warned) == 2 and all(w.startswith(said) for w in warned)


def test_two_threads_setting_one_unsent_variable_one_wins_and_the_other_raises() -> None:
    topic = P.variable(name="topic")
    graph = PendingGraph(object())
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def setter(i: int) -> None:
        barrier.wait()
        try:
            graph.set_local(topic, f"v{i}")
            outcomes.append("set")
        except P.ParrotError:
            outcomes.append("refused")

    threads = [threading.Thread(target=setter, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["refused"] * 7 + ["set"]
