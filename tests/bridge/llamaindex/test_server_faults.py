"""`Parrot` against a server that stops answering or refuses: `timeout` raises `ParrotError`
promptly on every path, and errors keep the server's type and code."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest
from aiohttp import web
from llama_index.core import PromptTemplate

from parrot_bridge.errors import ParrotError
from parrot_bridge.llamaindex import Parrot
from server.launcher import free_port
from tests.bridge.fake_server import (
    SESSION_ROUTES,
    FakeServer,
    json_answer,
    late_server,
    longest_stall,
    never_answer,
    slow_stream,
    still_pending,
    stream_then_stall,
)

CARD = {"data": [{"id": "m", "max_model_len": 64}]}
HANGING = {
    ("GET", "/v1/models"): json_answer(CARD),
    ("POST", "/v1/completions"): never_answer,
    ("POST", "/v1/sessions"): never_answer,
}


def test_timeout_is_a_parrot_error_naming_the_request() -> None:
    with FakeServer(HANGING) as url:
        llm = Parrot(base_url=url, timeout=1)
        expected = rf"{url} did not answer POST /v1/completions within 1"
        with pytest.raises(ParrotError, match=expected):
            llm.complete("hi")
        with pytest.raises(ParrotError, match=expected):
            asyncio.run(llm.acomplete("hi"))
        with pytest.raises(ParrotError, match=expected):
            list(llm.stream_complete("hi"))


TEXT_CHUNK = {"choices": [{"index": 0, "text": "a", "finish_reason": None}]}


async def test_a_stream_may_last_longer_than_the_timeout_while_it_keeps_sending() -> None:
    """`timeout` bounds the wait for each chunk, as the OpenAI client's and the SDK's streams
    do: a stream was cut once `timeout` had passed in all, however fast its chunks came."""
    routes = {**HANGING, ("POST", "/v1/completions"): slow_stream(TEXT_CHUNK, count=6, gap_s=0.3)}
    with FakeServer(routes) as url:
        llm = Parrot(base_url=url, timeout=1)
        assert list(llm.stream_complete("hi"))[-1].text == "a" * 6
        assert [r async for r in await llm.astream_complete("hi")][-1].text == "a" * 6
    stalled = {**HANGING, ("POST", "/v1/completions"): stream_then_stall}
    with FakeServer(stalled) as url:
        started = time.monotonic()
        with pytest.raises(ParrotError, match=rf"{url} did not answer POST /v1/completions"):
            list(Parrot(base_url=url, timeout=1).stream_complete("hi"))
        assert time.monotonic() - started < 5


def test_max_retries_waits_for_a_server_that_is_starting() -> None:
    """`max_retries` (LlamaIndex's OpenAI LLM's setting; refused before) sends again a request
    that could not connect, on the plain routes (which never retried) and predict's session."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    for call in (lambda llm: llm.complete("hi"),
                 lambda llm: llm.predict(PromptTemplate("Say {x}"), x="a")):  # fmt: skip
        with pytest.raises(ParrotError, match="cannot reach"):
            call(Parrot(base_url=url, max_retries=0))
    assert time.monotonic() - started < 1  # no retry (a session retried twice: 1.5 s)
    answer = {"choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}]}
    routes = {("GET", "/v1/models"): json_answer(CARD),
              ("POST", "/v1/completions"): json_answer(answer)}  # fmt: skip
    with late_server(routes) as (url, up):
        assert Parrot(base_url=url, max_retries=4).complete("hi").text == "ok"  # after 0.5 s
        assert up.is_set()


def test_predict_honours_the_timeout() -> None:
    with FakeServer(HANGING) as url:
        llm = Parrot(base_url=url, timeout=1)
        with pytest.raises(ParrotError, match="did not answer POST /v1/sessions within 1"):
            asyncio.run(asyncio.wait_for(llm.apredict(PromptTemplate("Say {x}"), x="a"), 10))


def test_predict_timeout_bounds_the_wait_for_a_value_the_server_keeps_polling_on() -> None:
    routes = {**HANGING, **SESSION_ROUTES,
              ("GET", "/v1/sessions/s-1/variables/{var}"): still_pending}  # fmt: skip
    with FakeServer(routes) as url:
        llm = Parrot(base_url=url, timeout=1)
        with pytest.raises(ParrotError, match="timed out after 1"):
            llm.predict(PromptTemplate("Say {x}"), x="a")
        with pytest.raises(ParrotError, match="timed out after 1"):
            asyncio.run(asyncio.wait_for(llm.apredict(PromptTemplate("Say {x}"), x="a"), 10))


def test_error_responses_keep_the_servers_type_and_code() -> None:
    error = {"message": "too long", "type": "invalid_request_error", "code": "context_length"}
    routes = {
        ("GET", "/v1/models"): json_answer(CARD),
        ("POST", "/v1/completions"): json_answer({"error": error}, status=400),
    }
    with FakeServer(routes) as url:
        with pytest.raises(ParrotError, match="too long") as e:
            Parrot(base_url=url).complete("hi")
    assert (e.value.status, e.value.type, e.value.code) == (400, error["type"], error["code"])


def test_async_methods_do_not_block_the_callers_loop_while_the_model_card_loads() -> None:
    """The first call looks the model up (`/v1/models`); from `acomplete` and the other async
    methods that lookup must be awaited, not waited on, or every task on the caller's event
    loop stops until the server answers."""

    async def slow_card(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return web.json_response(CARD)

    answer = {"choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}]}
    routes = {
        ("GET", "/v1/models"): slow_card,
        ("POST", "/v1/completions"): json_answer(answer),
    }

    async def complete_stall(llm: Parrot) -> float:
        replies: list[str] = []

        async def complete() -> None:
            replies.append((await llm.acomplete("hi")).text)

        stall = await longest_stall(complete())
        assert replies == ["ok"]
        return stall

    with FakeServer(routes) as url:
        assert asyncio.run(complete_stall(Parrot(base_url=url, timeout=10))) < 0.75


def test_settings_changed_after_construction_take_effect() -> None:
    """`timeout`, `max_retries`, `api_key` and `base_url` assigned to an LLM (pydantic allows
    it) or given to `model_copy` reach its next request: its client was built once, at
    construction, and kept the old ones."""

    async def needs_key(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer k2":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        return web.json_response({"choices": [{"text": "ok", "index": 0}]})

    other = {"data": [{"id": "m2", "max_model_len": 64}]}
    keyed_routes = {("GET", "/v1/models"): json_answer(other),
                    ("POST", "/v1/completions"): needs_key}  # fmt: skip
    with FakeServer(HANGING) as url, FakeServer(keyed_routes) as keyed:
        llm = Parrot(base_url=url, timeout=10)
        assert llm.metadata.model_name == "m"
        llm.timeout = 1
        started = time.monotonic()
        with pytest.raises(ParrotError, match=r"did not answer POST /v1/completions within 1\b"):
            llm.complete("hi")
        copy = Parrot(base_url=url, timeout=10).model_copy(update={"timeout": 1})
        with pytest.raises(ParrotError, match=r"within 1\b"):
            list(copy.stream_complete("hi"))
        assert time.monotonic() - started < 5  # not the 10 s set at construction
        llm.base_url, llm.api_key = keyed, "k1"
        assert llm.metadata.model_name == "m2"  # the new server's card
        with pytest.raises(ParrotError, match="bad key"):
            llm.complete("hi")
        llm.api_key = "k2"
        assert llm.complete("hi").text == "ok"
    llm = Parrot(base_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    llm.max_retries = 0
    started = time.monotonic()
    with pytest.raises(ParrotError, match="cannot reach"):
        llm.complete("hi")
    assert time.monotonic() - started < 1  # no retry (3 of them: 3.5 s)


_forked_llm: Parrot


def _complete_in_child() -> str:
    try:
        return _forked_llm.complete("hi").text
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_an_llm_used_before_a_fork_serves_in_the_forked_child() -> None:
    """The child (multiprocessing's default start on Linux) has a loop of its own, but the LLM
    kept the HTTP client it had made on the parent's: "RuntimeError: Timeout context manager
    should be used inside a task"."""
    global _forked_llm
    answer = {"choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}]}
    routes = {("GET", "/v1/models"): json_answer(CARD),
              ("POST", "/v1/completions"): json_answer(answer)}  # fmt: skip
    with FakeServer(routes) as url:
        _forked_llm = Parrot(base_url=url)
        assert _forked_llm.complete("hi").text == "ok"  # its client is made, here
        pool = multiprocessing.get_context("fork").Pool(1)
        try:
            assert pool.apply_async(_complete_in_child).get(timeout=30) == "ok"
        finally:
            pool.terminate()
