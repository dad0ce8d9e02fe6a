"""The served-model lookup of ChatParrot and ParrotLLM against a stand-in server: async calls
never block their event loop on it, and ParrotLLM retries a server that is not up yet."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from aiohttp import web

from parrot_bridge.langchain import ChatParrot, ParrotLLM
from server.launcher import free_port
from tests.bridge.fake_server import (
    SESSION_ROUTES,
    FakeServer,
    Handler,
    json_answer,
    longest_stall,
)

CARD = {"id": "m", "max_model_len": 64}
REPLY = {
    "id": "c-1", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
VALUE = {"status": "ready", "value": "hi", "finish_reason": "stop",
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
ROUTES: dict[tuple[str, str], Handler] = {
    **SESSION_ROUTES,
    ("GET", "/v1/models"): json_answer({"object": "list", "data": [CARD]}),
    ("GET", "/v1/sessions/s-1/variables/{var}"): json_answer(VALUE),
}


async def chat(request: web.Request) -> web.StreamResponse:
    if not (await request.json()).get("stream"):
        return web.json_response(REPLY)
    delta = {**REPLY, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(f"data: {json.dumps(delta)}\n\ndata: [DONE]\n\n".encode())
    return response


async def slow_models(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(1)
    return web.json_response({"object": "list", "data": [CARD]})


async def test_async_calls_do_not_block_the_loop_on_the_model_lookup() -> None:
    routes = {**ROUTES, ("GET", "/v1/models"): slow_models, ("POST", "/v1/chat/completions"): chat}
    with FakeServer(routes) as url:

        async def astream() -> None:
            async for _ in ChatParrot(base_url=url).astream("hi"):
                pass

        assert await longest_stall(ChatParrot(base_url=url).ainvoke("hi")) < 0.5
        assert await longest_stall(astream()) < 0.5
        assert await longest_stall(ParrotLLM(base_url=url).ainvoke("hi")) < 0.5


def test_llm_retries_a_server_it_cannot_reach_yet() -> None:
    port = free_port()
    llm = ParrotLLM(base_url=f"http://127.0.0.1:{port}", max_tokens=4, max_retries=4)
    with FakeServer(ROUTES, port):
        assert llm.invoke("hi") == "hi"  # (the model lookup is done now)
    done = threading.Event()

    def restart() -> None:  # the server restarting: down for 0.3 s
        time.sleep(0.3)
        with FakeServer(ROUTES, port):
            done.wait(10)

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        assert llm.invoke("hi") == "hi"
    finally:
        done.set()
        thread.join(10)


def test_another_server_set_later_is_asked_for_its_model() -> None:
    """The served model's card was kept by name only: after `base_url` changed, the old
    server's id (and context length) went on being reported."""
    other = {**ROUTES, ("GET", "/v1/models"): json_answer(
        {"object": "list", "data": [{"id": "other", "max_model_len": 128}]})}  # fmt: skip
    with FakeServer(ROUTES) as first, FakeServer(other) as second:
        llm = ParrotLLM(base_url=first, max_tokens=4)
        assert llm.generate(["hi"]).llm_output["model_name"] == "m"
        llm.base_url = second
        assert llm.generate(["hi"]).llm_output["model_name"] == "other"
