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
    never_answer,
    still_pending,
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
