"""`Parrot`'s function calling against a stand-in server: what its requests carry (tools,
tool_choice, past calls and results) and how answers' calls become `ToolSelection`s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from aiohttp import web
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.tools import FunctionTool
from openai.types.chat import ChatCompletionMessageToolCall
from pydantic import BaseModel

from parrot_bridge.llamaindex import Parrot
from tests.bridge.fake_server import FakeServer, json_answer

CARD = {"data": [{"id": "m", "max_model_len": 64}]}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip


class City(BaseModel):
    city: Literal["Paris", "Rome"]


def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"sunny in {city}"


# (the schema as a model: this module's annotations are strings, which FunctionTool won't read)
WEATHER = FunctionTool.from_defaults(fn=get_weather, fn_schema=City)


def answer(content: str | None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    reason = "tool_calls" if calls else "stop"
    return {"id": "c-1", "model": "m", "usage": {},
            "choices": [{"index": 0, "message": message, "finish_reason": reason}]}  # fmt: skip


class Recorder:
    """The chat route: records each request's body, answers `reply`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.reply = answer("hi")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        return web.json_response(self.reply)


@pytest.fixture
def served() -> Iterator[tuple[Parrot, Recorder]]:
    recorder = Recorder()
    routes = {("GET", "/v1/models"): json_answer(CARD),
              ("POST", "/v1/chat/completions"): recorder.handle}  # fmt: skip
    with FakeServer(routes) as url:
        yield Parrot(base_url=url, max_tokens=8), recorder


def test_tools_and_tool_choice_reach_the_chat_route(served: tuple[Parrot, Recorder]) -> None:
    llm, recorder = served
    assert llm.metadata.is_function_calling_model and not llm.metadata.is_chat_model
    spec = WEATHER.metadata.to_openai_tool()
    history = [ChatMessage(role="system", content="Be brief.")]
    llm.chat_with_tools([WEATHER], user_msg="Weather?", chat_history=history, tool_required=True)
    body = recorder.bodies[-1]
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Weather?"}]  # fmt: skip
    assert body["tools"] == [spec]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("required", False)
    assert len(history) == 1  # the caller's history is left alone
    chosen = {
        "get_weather": {"type": "function", "function": {"name": "get_weather"}},
        "none": "none",
        None: "auto",
    }
    for choice, sent in chosen.items():
        llm.chat_with_tools([WEATHER], user_msg="Weather?", tool_choice=choice,
                            allow_parallel_tool_calls=True)  # fmt: skip
        body = recorder.bodies[-1]
        assert (body["tool_choice"], body["parallel_tool_calls"]) == (sent, True)
    # no tools: no tool_choice either (the server refuses one without tools)
    llm.chat_with_tools([], user_msg="Weather?", tool_required=True)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & recorder.bodies[-1].keys()
    llm.chat([ChatMessage(role="user", content="Hi")])  # and a plain chat offers none
    assert "tools" not in recorder.bodies[-1]


def test_past_calls_and_tool_results_go_back_as_history(served: tuple[Parrot, Recorder]) -> None:
    """Calls as this LLM keeps them (dicts in additional_kwargs), as LlamaIndex's OpenAI LLM
    keeps them (the client's objects, and blocks), and the `tool` messages answering them."""
    llm, recorder = served
    dict_args = ToolCallBlock(tool_call_id="call_2", tool_name="get_weather",
                              tool_kwargs={"city": "Rome"})  # fmt: skip
    history = [
        ChatMessage(role="user", content="Weather in Paris and Rome?"),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [CALL]}),
        ChatMessage(role="tool", content="sunny", additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(role="assistant", additional_kwargs={
            "tool_calls": [ChatCompletionMessageToolCall.model_validate(CALL)]}),
        ChatMessage(role="tool", content="sunny", additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(role="assistant", blocks=[dict_args]),
        ChatMessage(role="tool", content="rain", additional_kwargs={"tool_call_id": "call_2"}),
    ]  # fmt: skip
    llm.chat_with_tools([WEATHER], chat_history=history)
    call_2 = {"id": "call_2", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}  # fmt: skip
    assert recorder.bodies[-1]["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "", "tool_calls": [call_2]},
        {"role": "tool", "content": "rain", "tool_call_id": "call_2"},
    ]


def test_an_answers_calls_become_tool_selections(served: tuple[Parrot, Recorder]) -> None:
    """Arguments that are not JSON are read as LlamaIndex's OpenAI LLM reads them: as far as
    they go (a call cut by max_tokens), else as no arguments."""
    llm, recorder = served
    arguments = {
        '{"city": "Paris"}': {"city": "Paris"},
        '{"city": "Paris", "da': {"city": "Paris"},
        '{  "city":': {"city": None},
        "": {},
        "Paris": {},
        '["Paris"]': {},
    }
    calls = [{**CALL, "id": f"call_{i}", "function": {"name": "get_weather", "arguments": a}}
             for i, a in enumerate(arguments)]  # fmt: skip
    recorder.reply = answer(None, calls)
    response = llm.chat_with_tools([WEATHER], user_msg="Weather?", allow_parallel_tool_calls=True)
    assert response.message.content == ""
    assert response.message.additional_kwargs["tool_calls"] == calls
    selections = llm.get_tool_calls_from_response(response)
    assert [(s.tool_id, s.tool_name, s.tool_kwargs) for s in selections] == [
        (f"call_{i}", "get_weather", kwargs) for i, kwargs in enumerate(arguments.values())
    ]
    # the message, kept as an agent's memory keeps it, reads back the same
    again = ChatMessage.model_validate(json.loads(response.message.model_dump_json()))
    assert llm.get_tool_calls_from_response(response.model_copy(update={"message": again})) == (
        selections
    )


def test_a_text_answer_has_no_tool_calls(served: tuple[Parrot, Recorder]) -> None:
    llm, recorder = served
    recorder.reply = answer("It is sunny.")
    response = llm.chat_with_tools([WEATHER], user_msg="Weather?", tool_choice="none")
    assert response.message.content == "It is sunny." and not response.message.additional_kwargs
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(response)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.predict_and_call([WEATHER], user_msg="Weather?")
    out = llm.predict_and_call([WEATHER], user_msg="Weather?", error_on_no_tool_call=False)
    assert (out.response, out.sources) == ("It is sunny.", [])
