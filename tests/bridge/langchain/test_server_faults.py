"""ChatParrot and ParrotLLM against a server that stops answering: `timeout` raises
`ParrotError` promptly on every path."""

from __future__ import annotations

import asyncio
import time

import pytest

from parrot_bridge.errors import ParrotError
from parrot_bridge.langchain import ChatParrot, ParrotLLM
from tests.bridge.fake_server import (
    SESSION_ROUTES,
    FakeServer,
    json_answer,
    late_server,
    never_answer,
    slow_stream,
    still_pending,
    stream_then_stall,
)

MODELS = json_answer({"object": "list", "data": [{"id": "m", "max_model_len": 64}]})
HANGING = {
    ("GET", "/v1/models"): MODELS,
    ("GET", "/v1/models/m"): json_answer({"id": "m", "max_model_len": 64}),
    ("POST", "/v1/chat/completions"): never_answer,
    ("POST", "/v1/sessions"): never_answer,
}


def test_chat_timeout_is_a_parrot_error_naming_the_request() -> None:
    with FakeServer(HANGING) as url:
        chat = ChatParrot(base_url=url, model="m", timeout=1, max_retries=0)
        expected = rf"{url} did not answer POST /v1/chat/completions within 1"
        with pytest.raises(ParrotError, match=expected):
            chat.invoke("hi")
        with pytest.raises(ParrotError, match=expected):
            list(chat.stream("hi"))


async def test_llm_honours_its_timeout() -> None:
    with FakeServer(HANGING) as url:
        llm = ParrotLLM(base_url=url, model="m", max_tokens=4, timeout=1)
        start = time.monotonic()
        with pytest.raises(ParrotError, match="did not answer POST /v1/sessions within 1"):
            await asyncio.wait_for(llm.ainvoke("hi"), 10)
        with pytest.raises(ParrotError, match="did not answer POST /v1/sessions within 1"):
            await asyncio.to_thread(llm.batch, ["hi", "yo"])
        assert time.monotonic() - start < 10


def test_llm_timeout_bounds_the_wait_for_a_value_the_server_keeps_polling_on() -> None:
    """A server that answers every poll ("still generating") must not outlast `timeout` either,
    as a plain request would not."""
    routes = {**HANGING, **SESSION_ROUTES,
              ("GET", "/v1/sessions/s-1/variables/{var}"): still_pending}  # fmt: skip
    with FakeServer(routes) as url:
        llm = ParrotLLM(base_url=url, model="m", max_tokens=4, timeout=1)
        start = time.monotonic()
        with pytest.raises(ParrotError, match="timed out after 1"):
            llm.invoke("hi")
        with pytest.raises(ParrotError, match="timed out after 1"):
            asyncio.run(llm.ainvoke("hi"))
        assert time.monotonic() - start < 10


CHAT_CHUNK = {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
              "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}  # fmt: skip


async def test_a_chat_stream_may_last_longer_than_the_timeout_while_it_keeps_sending() -> None:
    """`timeout` bounds the wait for each chunk, as ChatOpenAI's does: a stream was cut once
    `timeout` had passed in all, however fast its chunks came; a stall still raises it."""
    routes = {**HANGING, ("POST", "/v1/chat/completions"): slow_stream(CHAT_CHUNK, 6, 0.3)}
    with FakeServer(routes) as url:
        chat = ChatParrot(base_url=url, model="m", timeout=1, max_retries=0)
        assert "".join(str(c.content) for c in chat.stream("hi")) == "a" * 6
        assert "".join([str(c.content) async for c in chat.astream("hi")]) == "a" * 6
    stalled = {**HANGING, ("POST", "/v1/chat/completions"): stream_then_stall}
    with FakeServer(stalled) as url:
        started = time.monotonic()
        with pytest.raises(ParrotError, match=rf"{url} did not answer POST /v1/chat/completions"):
            list(ChatParrot(base_url=url, model="m", timeout=1, max_retries=0).stream("hi"))
        assert time.monotonic() - started < 5


def test_a_chat_stream_waits_for_a_server_that_is_starting() -> None:
    """`max_retries` sends a stream again that could not connect, as it does a request (a
    stream failed at once before)."""
    routes = {("GET", "/v1/models/m"): json_answer({"id": "m", "max_model_len": 64}),
              ("POST", "/v1/chat/completions"): slow_stream(CHAT_CHUNK, 2, 0.0)}  # fmt: skip
    with late_server(routes) as (url, up):
        chat = ChatParrot(base_url=url, model="m", max_retries=4)
        assert "".join(str(c.content) for c in chat.stream("hi")) == "aa"
        assert up.is_set()
