"""The SDK against a server that stops answering: time limits raise `ParrotError` promptly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import parrot_bridge as P
from parrot_bridge.transport import Transport, retry_wait
from tests.bridge.fake_server import (
    SESSION_ROUTES,
    FakeServer,
    json_answer,
    late_server,
    never_answer,
    still_pending,
    stream_then_stall,
)

VARIABLE = "/v1/sessions/s-1/variables/{var}"


@P.semantic_function(max_tokens=4)
def echo(x):
    """Echo {{input:x}}:{{output:y}}"""


def test_session_timeout_bounds_each_request() -> None:
    with FakeServer({("POST", "/v1/sessions"): never_answer}) as url:
        start = time.monotonic()
        with pytest.raises(
            P.ParrotError, match=rf"{url} did not answer POST /v1/sessions within 1"
        ):
            P.Session(url, timeout=1).open()
        assert time.monotonic() - start < 8


def test_a_long_poll_gets_the_session_timeout_beyond_its_wait() -> None:
    with FakeServer({**SESSION_ROUTES, ("GET", VARIABLE): never_answer}) as url:
        with P.Session(url, poll_s=1, timeout=1):
            start = time.monotonic()
            with pytest.raises(P.ParrotError, match=r"did not answer GET .*/variables/.* within 2"):
                echo("a").get()
            assert time.monotonic() - start < 10


async def test_get_timeout_holds_when_the_server_stops_answering() -> None:
    with FakeServer({**SESSION_ROUTES, ("GET", VARIABLE): never_answer}) as url:
        async with P.Session(url):  # the default request limit is far longer than the test
            start = time.monotonic()
            with pytest.raises(P.ParrotError, match="timed out after 1 s waiting for variable"):
                await asyncio.wait_for(echo("a").aget(timeout=1), 10)
            assert time.monotonic() - start < 8


def test_a_stream_that_stops_sending_times_out() -> None:
    routes = {**SESSION_ROUTES, ("GET", VARIABLE + "/stream"): stream_then_stall}
    with FakeServer(routes) as url, P.Session(url, timeout=1):
        with pytest.raises(P.ParrotError, match=r"did not answer GET .*/stream within 1"):
            list(echo("a").stream())


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        P.Session("http://127.0.0.1:9", timeout=0)


def test_closing_a_session_the_server_forgot_is_not_an_error() -> None:
    gone = {"error": {"message": "session 's-1' does not exist", "type": "not_found_error"}}
    routes = {**SESSION_ROUTES, ("DELETE", "/v1/sessions/s-1"): json_answer(gone, status=404)}
    with FakeServer(routes) as url:
        with P.Session(url):  # it expired on the server (session TTL) before the block ended
            pass
        refused = {**routes, ("DELETE", "/v1/sessions/s-1"): json_answer(gone, status=500)}
    with FakeServer(refused) as url:
        with pytest.raises(P.ParrotError, match="does not exist"), P.Session(url):
            pass


def test_a_session_waits_for_a_server_that_is_starting() -> None:
    """Requests that could not connect are sent again (`max_retries`, as the OpenAI client's):
    nothing reached the server, so nothing is done twice."""
    with late_server(SESSION_ROUTES) as (url, up):
        with pytest.raises(P.ParrotError, match="cannot reach"):
            P.Session(url, max_retries=0).open()
        session = P.Session(url, max_retries=5).open()  # waits 0.5, 1, 2, ... s
        assert up.is_set() and session.id == "s-1"
        session.close()


def test_retries_wait_as_the_openai_client_does() -> None:
    """0.5 s doubling to 8 s: it waited 0.1 s doubling, 0.3 s in all for 2 retries."""
    assert [retry_wait(a) for a in range(6)] == [0.5, 1, 2, 4, 8, 8]


class _FailingGraphTransport(Transport):
    """Fails sending a graph the way an unexpected client-side bug would (not a ParrotError)."""

    async def request(self, method: str, path: str, body: object = None, *args, **kwargs):
        if path.endswith("/graph"):
            raise TypeError("Object of type set is not JSON serializable")
        return await super().request(method, path, body, *args, **kwargs)


def test_a_submission_that_could_not_be_sent_fails_its_calls_instead_of_losing_them() -> None:
    with FakeServer(SESSION_ROUTES) as url:
        with P.Session(url, transport=_FailingGraphTransport(url)) as session:
            first, second = echo("a"), echo("b")
            with pytest.raises(TypeError):
                session.flush()
            # both outputs fail with the reason; reading them sends nothing again
            for var in (first, second):
                with pytest.raises(P.ParrotError, match="could not be submitted: TypeError"):
                    var.get(timeout=5)


def test_a_read_in_flight_when_the_session_closes_says_so() -> None:
    """Closed from another thread while a read long-polls: the read says the session was
    closed (not that the server could not be reached)."""
    routes = {**SESSION_ROUTES, ("GET", VARIABLE): still_pending}
    with FakeServer(routes) as url:
        session = P.Session(url).open()
        text = echo.invoke(session, "anything")
        errors: list[Exception] = []

        def read() -> None:
            try:
                text.get(timeout=30)
            except P.ParrotError as exc:
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.5)
        session.close()
        reader.join(10)
        [error] = errors
        assert "was closed while variable" in str(error), error


def test_a_read_that_times_out_has_the_timeout_code_a_request_that_does_has() -> None:
    """`get(timeout=)` raised a ParrotError with no `code`, where a request or a stream that
    timed out has code "timeout": one check could not tell a timeout from the server's errors."""
    pending = {**SESSION_ROUTES, ("GET", VARIABLE): still_pending}  # answers, pending
    silent = {**SESSION_ROUTES, ("GET", VARIABLE): never_answer}  # answers nothing
    for routes in (pending, silent):
        with FakeServer(routes) as url, P.Session(url, poll_s=0.5):
            with pytest.raises(P.ParrotError, match="timed out after 1 s") as got:
                echo("a").get(timeout=1)
            assert (got.value.code, got.value.status) == ("timeout", None)


def test_a_url_that_is_no_http_url_is_refused_where_it_is_given() -> None:
    """"127.0.0.1:9000" failed at the first read as "cannot reach the Parrot server at
    127.0.0.1:9000: 127.0.0.1:9000/v1/sessions"; the LangChain and LlamaIndex classes refuse it
    at once, naming it."""
    for url in ("127.0.0.1:9000", "localhost:9000", "ftp://host", ""):
        with pytest.raises(ValueError, match=rf"must start with http:// or https://, got '{url}'"):
            P.Session(url)


def test_a_url_ending_in_v1_as_openai_clients_write_it_is_the_servers_root() -> None:
    """An OpenAI client's base_url ends in /v1 (ChatOpenAI's users write it so); the session
    added /v1 again: every request was a 404, "no route POST /v1/v1/sessions"."""
    with FakeServer(SESSION_ROUTES) as url:
        for given in (url + "/v1", url + "/v1/"):
            with P.Session(given) as session:
                assert session.id is not None and session.url == url
    assert P.Session("http://h:9/api/v1x").url == "http://h:9/api/v1x"  # not ours: kept
