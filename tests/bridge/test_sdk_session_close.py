"""Closing a session while its variables are read or streamed, and closing it again after the
server could not be told."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiohttp import web

import parrot_bridge as P
from tests.bridge.fake_server import SESSION_ROUTES, FakeServer, json_answer, stream_then_stall

STREAM = "/v1/sessions/s-1/variables/{var}/stream"
CLOSED = r"session s-1 was closed while variable 'y' \(v-[0-9a-f]+\) was read"


@P.semantic_function(max_tokens=4)
def echo(x):
    """Echo {{input:x}}:{{output:y}}"""


def test_a_stream_read_while_another_thread_closes_the_session_raises_at_once() -> None:
    """The stream's connection outlived the client that closing shut: it hung for good,
    whatever the session's timeout."""
    routes = {**SESSION_ROUTES, ("GET", STREAM): stream_then_stall}
    with FakeServer(routes) as url:
        session = P.Session(url, timeout=60).open()
        text = echo.invoke(session, "anything")
        closer = threading.Timer(0.5, session.close)
        closer.start()
        start = time.monotonic()
        with pytest.raises(P.ParrotError, match=CLOSED) as got:
            list(text.stream())
        assert time.monotonic() - start < 10
        assert not isinstance(got.value, P.CallFailedError)
        closer.join(10)


async def test_an_async_stream_ends_when_its_session_block_ends() -> None:
    routes = {**SESSION_ROUTES, ("GET", STREAM): stream_then_stall}
    with FakeServer(routes) as url:
        async with P.Session(url, timeout=60):
            text = echo("anything")

            async def consume() -> list[str]:
                return [chunk async for chunk in text.astream()]

            reader = asyncio.create_task(consume())
            await asyncio.sleep(0.5)
        with pytest.raises(P.ParrotError, match=CLOSED) as got:
            await asyncio.wait_for(reader, 10)
        assert not isinstance(got.value, P.CallFailedError)


async def _closed_stream(request: web.Request) -> web.StreamResponse:
    """What the server streams to a reader of a session that is closed meanwhile."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(0.5)
    error = '{"error": {"message": "session \'s-1\' was closed", "type": "call_failed"}}'
    await response.write(f"event: error\ndata: {error}\n\n".encode())
    return response


def test_a_stream_and_a_read_cut_by_closing_raise_the_same_error() -> None:
    routes = {**SESSION_ROUTES, ("GET", STREAM): _closed_stream}
    with FakeServer(routes) as url:
        session = P.Session(url).open()
        text = echo.invoke(session, "anything")
        closer = threading.Timer(0.2, session.close)
        closer.start()
        with pytest.raises(P.ParrotError, match=CLOSED) as got:
            list(text.stream())
        assert type(got.value) is P.ParrotError
        closer.join(10)


def test_closing_is_retried_when_the_server_could_not_be_told() -> None:
    answers = iter([500, 200])

    async def delete(request: web.Request) -> web.StreamResponse:
        status = next(answers)
        body = {"error": {"message": "busy", "type": "server_error"}} if status >= 400 else {}
        return web.json_response(body, status=status)

    with FakeServer({**SESSION_ROUTES, ("DELETE", "/v1/sessions/s-1"): delete}) as url:
        session = P.Session(url).open()
        with pytest.raises(P.ParrotError, match="busy"):
            session.close()
        with pytest.raises(P.ParrotError, match="is closed"):  # no new calls meanwhile
            echo.invoke(session, "x")
        session.close()  # told this time
        session.close()  # and done: nothing sent
        assert next(answers, None) is None


def test_get_timeout_must_be_a_time() -> None:
    with FakeServer({**SESSION_ROUTES, ("GET", "/v1/x"): json_answer({})}) as url:
        with P.Session(url):
            text = echo("a")
            for bad in (-1, float("nan"), True, "5"):
                with pytest.raises(ValueError, match="timeout must be None or a number"):
                    text.get(timeout=bad)


def test_a_variable_of_a_closed_session_says_so_when_read_or_passed_on() -> None:
    """A read begun after closing said the session "was closed while" it was read, and passing
    the variable to another session advised to get() it, which cannot succeed."""
    with FakeServer(SESSION_ROUTES) as url:
        with P.Session(url) as first:
            text, unset = echo("a"), P.variable(name="q")
            asked = echo(unset)
            first.flush()
            with P.Session(url) as second:
                with pytest.raises(P.ParrotError, match=r"'q' \(v-.*\) of another session, "
                                                        "which has no value yet: set"):  # fmt: skip
                    echo.invoke(second, unset)
        assert asked.value is None
        with pytest.raises(P.ParrotError, match=r"session s-1 is closed: variable 'y' \(v-"):
            text.get()
        with P.Session(url) as third:
            with pytest.raises(P.ParrotError, match="no value, and its session s-1 is closed"):
                echo.invoke(third, text)
