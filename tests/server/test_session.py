"""A session's graph with its live feeds: waiting, streaming, closing (asyncio, no engine)."""

import asyncio

import pytest

from server.errors import ApiError
from server.graph import CallDecl, Submission, VariableDecl, VariableState
from server.session import Session
from server.session_store import SessionStore


def chain_session() -> Session:
    s = Session("s-1", "tok")
    ready = s.submit(
        Submission(
            variables=[VariableDecl("d", value="doc"), VariableDecl("a"), VariableDecl("b")],
            calls=[
                CallDecl("A", "{{input:x}} {{output:y}}", {"x": "d"}, {"y": "a"}),
                CallDecl("B", "{{input:x}} {{output:y}}", {"x": "a"}, {"y": "b"}),
            ],
        )
    )
    assert [c.id for c in ready] == ["A"]
    return s


async def test_waiters_and_followers_see_chunks_then_the_value() -> None:
    s = chain_session()
    waiter = asyncio.create_task(s.wait("a", timeout=5, criteria="throughput"))
    follower = asyncio.create_task(_collect(s, "a"))
    await asyncio.sleep(0)
    s.graph.start("A")
    s.push_chunk("a", "hel")
    s.push_chunk("a", "lo")
    await asyncio.sleep(0)
    late = asyncio.create_task(_collect(s, "a"))  # joins midway, still gets everything
    ready = s.complete_output("A", "y", "hello!")
    assert [c.id for c in ready] == ["B"]
    assert (await waiter).value == "hello!"
    assert await follower == ["hel", "lo", "!"]
    assert "".join(await late) == "hello!"
    assert s.graph.awaits == {"a": "throughput"}
    assert await _collect(s, "a") == ["hello!"]  # a finished variable streams its value


async def test_chunks_nobody_read_can_be_taken_back_for_a_call_run_again() -> None:
    s = chain_session()
    s.graph.start("A")
    s.push_chunk("a", "half a")
    feed = s.feed("a")
    feed.restart()  # its engine died; nobody streamed it: it starts over
    s.push_chunk("a", "he")
    follower = asyncio.create_task(_collect(s, "a"))
    await asyncio.sleep(0)
    assert feed.followed
    with pytest.raises(RuntimeError, match="were read"):
        feed.restart()
    s.complete_output("A", "y", "hello")
    assert await follower == ["he", "llo"]


async def test_a_follower_that_has_seen_nothing_yet_leaves_the_output_to_be_run_again() -> None:
    """A stream opened before its call generated (an SDK `stream()` right after submitting)
    has seen no text: the call may still run again from the start, and the stream then reads
    the new run's text alone."""
    s = chain_session()
    follower = asyncio.create_task(_collect(s, "a"))
    await asyncio.sleep(0)  # following, waiting for the first chunk
    feed = s.feed("a")
    assert not feed.followed
    s.graph.start("A")
    feed.restart()
    s.push_chunk("a", "hel")
    await asyncio.sleep(0)
    assert feed.followed
    s.complete_output("A", "y", "hello")
    assert await follower == ["hel", "lo"]


async def test_failure_and_close_end_feeds_with_an_error() -> None:
    s = chain_session()
    feed_b = s.feed("b")
    s.graph.start("A")
    s.fail_call("A", "boom")
    assert feed_b.done.is_set() and "upstream call 'A' failed: boom" in feed_b.error
    assert (await s.wait("b", timeout=1)).state is VariableState.FAILED
    s2 = chain_session()
    feed = s2.feed("b")
    s2.close()
    assert feed.error == "session 's-1' was closed"


async def test_reads_waiting_on_a_call_refused_on_arrival_wake_with_its_error() -> None:
    """A call whose sampling cannot be followed is added failed; the long polls and streams
    already waiting on what it (and what reads it) would write slept their whole timeout."""
    s = Session("s-1", "tok")
    s.submit(Submission(variables=[VariableDecl("x"), VariableDecl("y")]))
    waiter = asyncio.create_task(s.wait("x", timeout=5))
    feed = s.feed("y")
    follower = asyncio.create_task(_collect(s, "y"))
    await asyncio.sleep(0)
    s.submit(Submission(calls=[
        CallDecl("A", "q {{output:o}}", {}, {"o": "x"}, error="invalid sampling: temperature"),
        CallDecl("B", "{{input:i}} {{output:o}}", {"i": "x"}, {"o": "y"}),
    ]))  # fmt: skip
    var = await asyncio.wait_for(waiter, 0.5)
    assert var.state is VariableState.FAILED and "invalid sampling" in var.error
    assert await asyncio.wait_for(follower, 0.5) == [] and "upstream call 'A'" in feed.error


async def test_wait_times_out_with_the_pending_variable() -> None:
    s = chain_session()
    var = await s.wait("b", timeout=0.01)
    assert var.state is VariableState.PENDING


def test_store_checks_tokens() -> None:
    store = SessionStore()
    session, token = store.create("app")
    assert store.get(session.id, token) is session
    for bad, status in [(None, 401), ("wrong", 403)]:
        with pytest.raises(ApiError) as info:
            store.get(session.id, bad)
        assert info.value.status == status
    with pytest.raises(ApiError, match="does not exist"):
        store.get("s-missing", token)
    assert store.remove(session.id) is session and len(store) == 0


async def _collect(s: Session, var_id: str) -> list[str]:
    return [chunk async for chunk in s.feed(var_id).follow()]


def test_idle_sessions_are_found_only_when_nothing_runs() -> None:
    store = SessionStore()
    busy, _ = store.create()
    quiet, _ = store.create()
    busy.submit(
        Submission(
            variables=[VariableDecl("o")], calls=[CallDecl("A", "x {{output:y}}", {}, {"y": "o"})]
        )
    )
    busy.last_used -= 100
    quiet.last_used -= 100
    assert store.idle(50) == [quiet]  # busy has a ready call
    assert store.idle(500) == []


def client_owned_session() -> Session:
    """A call reading `x`, which the client has not set, and a call reading its output."""
    s = Session("s-1", "tok")
    ready = s.submit(
        Submission(
            variables=[VariableDecl("x", "input"), VariableDecl("a"), VariableDecl("b")],
            calls=[
                CallDecl("A", "sys {{input:x}} {{output:y}}", {"x": "x"}, {"y": "a"}),
                CallDecl("B", "{{input:x}} {{output:y}}", {"x": "a"}, {"y": "b"}),
            ],
        )
    )
    assert ready == []
    return s


async def test_calls_waiting_on_a_client_owned_variable_run_once_it_is_set() -> None:
    s = client_owned_session()
    assert (await s.wait("b", timeout=0.01)).state is VariableState.PENDING
    assert [c.id for c in s.set_value("x", "now")] == ["A"]
    assert s.graph.variables["x"].value == "now"


async def test_closing_wakes_the_reads_waiting_on_a_client_owned_variable() -> None:
    """Closing (or expiry, which closes) the session ends what waits on a variable the
    client never set, as for any waiting call."""
    s = client_owned_session()
    waiter = asyncio.create_task(s.wait("b", timeout=5))
    follower = asyncio.create_task(_collect(s, "a"))
    feed_x = s.feed("x")
    await asyncio.sleep(0)
    s.close("expired")
    assert (await asyncio.wait_for(waiter, 0.5)).state is VariableState.PENDING
    assert await asyncio.wait_for(follower, 0.5) == []
    assert s.feed("b").error == "closed" and feed_x.error == "session 's-1' expired"


async def test_a_refused_producer_of_a_client_owned_variable_wakes_its_old_readers() -> None:
    """A later call may write a client-owned variable that waiting calls read; refused on
    arrival, it fails them, and the reads waiting on their outputs wake with the cause."""
    s = client_owned_session()
    waiter = asyncio.create_task(s.wait("b", timeout=5))
    await asyncio.sleep(0)
    s.submit(Submission(calls=[CallDecl("W", "w {{output:o}}", {}, {"o": "x"}, error="no")]))
    var = await asyncio.wait_for(waiter, 0.5)
    assert var.state is VariableState.FAILED and "upstream call 'W' failed: no" in var.error


def test_a_session_whose_calls_wait_on_the_client_expires_when_idle() -> None:
    store = SessionStore()
    session, _ = store.create()
    session.submit(
        Submission(
            variables=[VariableDecl("x"), VariableDecl("o")],
            calls=[CallDecl("A", "{{input:x}} {{output:y}}", {"x": "x"}, {"y": "o"})],
        )
    )
    session.last_used -= 100
    assert store.idle(50) == [session]  # a waiting call does not keep it alive
