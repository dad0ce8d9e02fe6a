"""`Parrot` against a server that stops answering or refuses: `timeout` raises `ParrotError`
promptly on every path, and errors keep the server's type and code."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from llama_index.core import PromptTemplate

from parrot_bridge.errors import ParrotError
from parrot_bridge.llamaindex import Parrot
from tests.bridge.fake_server import (
    SESSION_ROUTES,
    FakeServer,
    json_answer,
    longest_stall,
    never_answer,
    still_pending,
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
