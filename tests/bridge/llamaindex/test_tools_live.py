"""`Parrot` as a LlamaIndex function-calling LLM against a live server with a tiny random model.

A forced call (a named `tool_choice`, or `tool_required` with one tool) is primed on the server
and its arguments follow the tool's schema, so even a random model makes a valid call; the
tools here take enums and booleans, whose values close at once (a random model's strings run
on until `max_tokens`)."""

from __future__ import annotations

from typing import Any, Literal

import openai
import pytest
from llama_index.core import PromptTemplate
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ChatResponse
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from parrot_bridge.llamaindex import Parrot
from tests.bridge.llamaindex.test_tools import WEATHER, get_weather
from tests.server.http_client import request

pytestmark = pytest.mark.slow

MAX_TOKENS = 96  # room for the random model's whitespace inside the arguments
ASK = "Weather in Paris?"


def now() -> str:
    """The time."""
    return "noon"


CLOCK = FunctionTool.from_defaults(fn=now)


class Verdict(BaseModel):
    """A verdict on a city."""

    ok: bool
    city: Literal["Paris", "Rome"]


@pytest.fixture(scope="module")
def llm(url: str) -> Parrot:
    return Parrot(base_url=url, max_tokens=MAX_TOKENS)


def calls(llm: Parrot, response: ChatResponse) -> list[tuple[str, dict[str, Any]]]:
    return [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(response)]


def test_a_forced_call_is_the_servers_answer(llm: Parrot, url: str) -> None:
    """The same request from the OpenAI client gets the same call: the tools and the choice
    reach the server as OpenAI's."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    named = {"type": "function", "function": {"name": "get_weather"}}
    # a named function's call finishes as "stop", a required one's as "tool_calls" (OpenAI's)
    forcings = [([WEATHER], {"tool_required": True}, "required", "tool_calls"),
                ([WEATHER, CLOCK], {"tool_choice": "get_weather"}, named, "stop")]  # fmt: skip
    for tools, forcing, choice, reason in forcings:
        response = llm.chat_with_tools(tools, user_msg=ASK, **forcing)
        [(name, kwargs)] = calls(llm, response)
        assert name == "get_weather" and kwargs in ({"city": "Paris"}, {"city": "Rome"})
        assert response.raw["choices"][0]["finish_reason"] == reason
        plain = client.chat.completions.create(
            model=llm.metadata.model_name, messages=[{"role": "user", "content": ASK}],
            tools=[t.metadata.to_openai_tool() for t in tools], tool_choice=choice,
            parallel_tool_calls=False, max_tokens=MAX_TOKENS, temperature=0,
        )  # fmt: skip
        [call] = plain.choices[0].message.tool_calls
        [ours] = response.message.additional_kwargs["tool_calls"]
        assert (ours["function"]["name"], ours["function"]["arguments"]) == (
            call.function.name, call.function.arguments,
        )  # fmt: skip
        assert ours["id"].startswith("call_")
    clock = llm.chat_with_tools([WEATHER, CLOCK], user_msg="Time?", tool_choice="now")
    assert calls(llm, clock) == [("now", {})]


async def test_predict_and_call_runs_the_tool(llm: Parrot) -> None:
    [(_, kwargs)] = calls(llm, llm.chat_with_tools([WEATHER], user_msg=ASK, tool_required=True))
    out = llm.predict_and_call([WEATHER], user_msg=ASK, tool_required=True)
    assert str(out) == get_weather(**kwargs)
    assert [(s.tool_name, s.raw_input["kwargs"]) for s in out.sources] == [("get_weather", kwargs)]
    out = await llm.apredict_and_call([WEATHER], user_msg=ASK, tool_required=True)
    assert str(out) == get_weather(**kwargs)


async def test_async_and_streamed_calls_are_the_same(llm: Parrot) -> None:
    expected = calls(llm, llm.chat_with_tools([WEATHER], user_msg=ASK, tool_required=True))
    answer = await llm.achat_with_tools([WEATHER], user_msg=ASK, tool_required=True)
    assert calls(llm, answer) == expected
    streamed = list(llm.stream_chat_with_tools([WEATHER], user_msg=ASK, tool_required=True))
    gen = await llm.astream_chat_with_tools([WEATHER], user_msg=ASK, tool_required=True)
    astreamed = [r async for r in gen]
    for pieces in (streamed, astreamed):
        # each call arrives whole: once seen, every later response has it
        seen = [bool(r.message.additional_kwargs) for r in pieces]
        assert seen[-1] and seen == sorted(seen)
        assert calls(llm, pieces[-1]) == expected
        assert "".join(r.delta or "" for r in pieces) == pieces[-1].message.content


def test_calls_and_results_go_back_as_history(llm: Parrot, url: str) -> None:
    """The server renders them as tool turns: the prompt is what /tokenize counts for the same
    history in OpenAI's shape."""
    response = llm.chat_with_tools([WEATHER], user_msg=ASK, tool_required=True)
    [call] = response.message.additional_kwargs["tool_calls"]
    result = ChatMessage(role="tool", content="sunny",
                         additional_kwargs={"tool_call_id": call["id"]})  # fmt: skip
    history = [ChatMessage(role="user", content=ASK), response.message, result]
    follow = llm.chat_with_tools([WEATHER], chat_history=history)
    assert isinstance(follow.message.content, str)
    plain = [{"role": "user", "content": ASK},
             {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": "sunny", "tool_call_id": call["id"]}]  # fmt: skip
    status, counted = request("POST", url + "/tokenize",
                              {"messages": plain, "tools": [WEATHER.metadata.to_openai_tool()]})  # fmt: skip
    assert status == 200
    assert follow.raw["usage"]["prompt_tokens"] == counted["count"]


async def test_a_text_answer_has_no_tool_calls(llm: Parrot) -> None:
    response = llm.chat_with_tools([WEATHER], user_msg=ASK, tool_choice="none")
    text = llm.chat([ChatMessage(role="user", content=ASK)])  # "none": as if no tools
    assert response.message.content == text.message.content
    assert not response.message.additional_kwargs
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(response)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    out = await llm.apredict_and_call(
        [WEATHER], user_msg=ASK, tool_choice="none", error_on_no_tool_call=False
    )
    assert (out.response, out.sources) == (text.message.content, [])


def test_a_call_cut_by_max_tokens_keeps_what_parses(url: str) -> None:
    short = Parrot(base_url=url, max_tokens=6)
    response = short.chat_with_tools([WEATHER], user_msg=ASK, tool_required=True)
    assert response.raw["choices"][0]["finish_reason"] == "length"
    [(name, kwargs)] = calls(short, response)
    assert name == "get_weather" and kwargs.keys() <= {"city"}


async def test_structured_predict_goes_through_a_forced_call(url: str) -> None:
    llm = Parrot(base_url=url, max_tokens=128)  # two fields, each padded with whitespace
    prompt = PromptTemplate("Is {city} fine?")
    verdict = llm.structured_predict(Verdict, prompt, city="Paris")
    assert isinstance(verdict, Verdict)
    assert await llm.astructured_predict(Verdict, prompt, city="Paris") == verdict
    # (LlamaIndex's stream_structured_predict leaves the choice to the model: "auto")


# (the workflow looks the agent over with inspect.getmembers, which reads pydantic's deprecated
# attributes: LlamaIndex's warnings, not this test's)
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
@pytest.mark.parametrize("streaming", [False, True])
async def test_function_agent_calls_the_tool_and_answers(llm: Parrot, streaming: bool) -> None:
    """The first step is forced to the tool; the second takes its result as history."""
    agent = FunctionAgent(tools=[WEATHER], llm=llm, initial_tool_choice="get_weather",
                          streaming=streaming)  # fmt: skip
    handler = agent.run(ASK)
    results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
    output = await handler
    assert [(r.tool_name, r.tool_output.content) for r in results] == [
        ("get_weather", get_weather(**results[0].tool_kwargs))
    ]
    assert results[0].tool_kwargs in ({"city": "Paris"}, {"city": "Rome"})
    # the final step answers in text (the random model calls nothing unforced)
    assert output.response.content and not output.response.additional_kwargs
