"""OpenAI's Responses API against a real server through the official client (and LangChain's
`use_responses_api`): each answer equals the chat completion of the messages it amounts to
(same template, tools and formats), streamed events tell the same output, and stored responses
are retrieved, deleted and followed."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.server.http_client import request

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function", "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}  # fmt: skip
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
GREEDY = {"temperature": 0}


def chat(client: openai.OpenAI, messages: list[dict], max_tokens: int, **kw: object):
    return client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=max_tokens, **GREEDY, **kw
    )


def test_an_answer_is_the_chat_completion_of_its_input(client: openai.OpenAI):
    r = client.responses.create(model="tiny", input="Hello there", instructions="Be brief.",
                                max_output_tokens=12, **GREEDY)  # fmt: skip
    c = chat(client, [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hello there"}], 12)  # fmt: skip
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.output_text == c.choices[0].message.content
    assert [o.type for o in r.output] == ["message"] and r.output[0].id.startswith("msg_")
    # a random model runs to its limit: OpenAI calls that incomplete
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete"
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.usage.output_tokens == 12 == r.usage.total_tokens - r.usage.input_tokens
    assert r.instructions == "Be brief." and r.max_output_tokens == 12 and r.temperature == 0


def test_input_items_become_the_chat_messages(client: openai.OpenAI):
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_text", "text": "!"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": "Weather?"},
    ]  # fmt: skip
    r = client.responses.create(model="tiny", input=items, max_output_tokens=6, **GREEDY)
    c = chat(client, [{"role": "system", "content": "Answer in French."},
                      {"role": "user", "content": "Hi\n!"},
                      {"role": "assistant", "content": "Bonjour"},
                      {"role": "user", "content": "Weather?"}], 6)  # fmt: skip
    assert r.output_text == c.choices[0].message.content
    assert r.usage.input_tokens == c.usage.prompt_tokens


def test_a_stream_tells_the_same_output_in_order(client: openai.OpenAI):
    whole = client.responses.create(model="tiny", input="Tell me", max_output_tokens=10,
                                    **GREEDY)  # fmt: skip
    events = list(client.responses.create(model="tiny", input="Tell me", max_output_tokens=10,
                                          stream=True, **GREEDY))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]  # fmt: skip
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-4].text
    last = events[-1].response
    assert last.output_text == whole.output_text
    assert (last.usage.input_tokens, last.usage.output_tokens) == (
        whole.usage.input_tokens, whole.usage.output_tokens)
    # the same prompt again: its full blocks came from the prefix cache
    assert last.usage.input_tokens_details.cached_tokens == whole.usage.input_tokens // 16 * 16
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    # the stored streamed response is what the stream ended with
    assert client.responses.retrieve(last.id).output_text == whole.output_text


def test_responses_and_their_events_are_valid_as_the_sdks_types(client: openai.OpenAI):
    """The client builds its typed objects without validating them: a field its types require
    that the server leaves out reads None (input_tokens_details.cache_write_tokens did). The
    SDK's models, validated, say what is missing."""
    fields = {"model": "tiny", "input": "Tell me", "max_output_tokens": 4, **GREEDY}
    whole = client.responses.with_raw_response.create(**fields).http_response.json()
    response = Response.model_validate(whole)
    details = response.usage.input_tokens_details
    assert details.cache_write_tokens == response.usage.input_tokens - details.cached_tokens
    streamed = client.responses.with_raw_response.create(stream=True, **fields).http_response
    datas = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    typed = TypeAdapter(ResponseStreamEvent)  # built once: ~0.1 s each
    events = [typed.validate_json(d) for d in datas]
    assert events[-1].type == "response.incomplete"
    stored = client.responses.with_raw_response.retrieve(response.id).http_response.json()
    Response.model_validate(stored)


def test_a_followed_response_continues_its_conversation(client: openai.OpenAI):
    first = client.responses.create(model="tiny", input="Hello", instructions="Be kind.",
                                    max_output_tokens=8, **GREEDY)  # fmt: skip
    second = client.responses.create(model="tiny", input="And then?", max_output_tokens=8,
                                     previous_response_id=first.id, **GREEDY)  # fmt: skip
    # the instructions stay with the first response; its input and output come first
    c = chat(client, [{"role": "user", "content": "Hello"},
                      {"role": "assistant", "content": first.output_text},
                      {"role": "user", "content": "And then?"}], 8)  # fmt: skip
    assert second.output_text == c.choices[0].message.content
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens == c.usage.prompt_tokens
    third = client.responses.create(model="tiny", input="More.", max_output_tokens=4,
                                    previous_response_id=second.id, **GREEDY)  # fmt: skip
    c3 = chat(client, [{"role": "user", "content": "Hello"},
                       {"role": "assistant", "content": first.output_text},
                       {"role": "user", "content": "And then?"},
                       {"role": "assistant", "content": second.output_text},
                       {"role": "user", "content": "More."}], 4)  # fmt: skip
    assert third.output_text == c3.choices[0].message.content
    # the second prompt's full KV blocks were cached and found again
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens // 16 * 16


def test_stored_responses_are_retrieved_deleted_and_not_stored_when_asked(
    client: openai.OpenAI, server: str
):
    r = client.responses.create(model="tiny", input="Hi", max_output_tokens=3, **GREEDY)
    again = client.responses.retrieve(r.id)
    assert again.model_dump() == r.model_dump()
    status, gone = request("DELETE", f"{server}/v1/responses/{r.id}")
    assert (status, gone) == (200, {"id": r.id, "object": "response", "deleted": True})
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError, match="previous response") as bad:
        client.responses.create(model="tiny", input="x", previous_response_id=r.id)
    assert bad.value.body["param"] == "previous_response_id"
    unstored = client.responses.create(model="tiny", input="Hi", max_output_tokens=3,
                                       store=False, **GREEDY)  # fmt: skip
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_a_named_tool_choice_answers_with_a_function_call_and_takes_its_output(
    client: openai.OpenAI,
):
    r = client.responses.create(
        model="tiny", input="Weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40, **GREEDY,
    )  # fmt: skip
    c = chat(client, [{"role": "user", "content": "Weather in Paris?"}], 40,
             tools=[CHAT_WEATHER], tool_choice={"type": "function",
                                                "function": {"name": "get_weather"}})  # fmt: skip
    expected = c.choices[0].message.tool_calls[0]
    call = r.output[-1]
    assert call.type == "function_call" and call.id.startswith("fc_")
    assert (call.name, call.arguments) == (expected.function.name, expected.function.arguments)
    assert call.call_id.startswith("call_")
    # cut by max_output_tokens (a random model writes on) or whole, as the chat's finish says
    cut = c.choices[0].finish_reason == "length"
    assert call.status == ("incomplete" if cut else "completed")
    streamed = list(client.responses.create(
        model="tiny", input="Weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40,
        stream=True, **GREEDY,
    ))  # fmt: skip
    done = next(e for e in streamed if e.type == "response.function_call_arguments.done")
    assert (done.name, done.arguments) == (call.name, call.arguments)
    # the function's output follows the stored call
    follow = client.responses.create(
        model="tiny", previous_response_id=r.id, tools=[WEATHER], max_output_tokens=5,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        **GREEDY,
    )  # fmt: skip
    past = {"id": call.call_id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip
    c2 = chat(client, [{"role": "user", "content": "Weather in Paris?"},
                       {"role": "assistant", "content": None, "tool_calls": [past]},
                       {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}], 5,
              tools=[CHAT_WEATHER])  # fmt: skip
    assert follow.usage.input_tokens == c2.usage.prompt_tokens
    answer = c2.choices[0].message
    assert follow.output_text == (answer.content or "")


def test_a_json_schema_format_and_logprobs_are_those_of_chat(client: openai.OpenAI):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = client.responses.create(
        model="tiny", input="A number", max_output_tokens=30, **GREEDY,
        text={"format": {"type": "json_schema", "name": "num", "schema": schema}},
        include=["message.output_text.logprobs"], top_logprobs=2,
    )  # fmt: skip
    c = chat(client, [{"role": "user", "content": "A number"}], 30, logprobs=True,
             top_logprobs=2, response_format={"type": "json_schema", "json_schema":
                                              {"name": "num", "schema": schema}})  # fmt: skip
    assert r.output_text == c.choices[0].message.content
    if c.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.output_text)["n"], int)
    got = r.output[0].content[0].logprobs
    want = c.choices[0].logprobs.content
    assert [(e.token, len(e.top_logprobs)) for e in got] == [(e.token, 2) for e in want]
    # equal to float32 rounding: the second request's prompt comes from the prefix cache, and
    # torch's matmul (linear layers on CPUs without AVX2) sums rows by the product's shape
    assert [e.logprob for e in got] == pytest.approx([e.logprob for e in want], abs=1e-4)
    plain = client.responses.create(model="tiny", input="A number", max_output_tokens=3)
    assert plain.output[0].content[0].logprobs is None  # not asked: left out


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input", "input[0].content[0]"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input", "'reasoning'"),
        ({"input": []}, "input", "empty"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools", "tools[0]"),
        ({"input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "tools",
         "tools[0].name"),
        # parameters that are no valid JSON Schema, named as this API names the field
        ({"input": "x", "tools": [{"type": "function", "name": "f",
                                   "parameters": {"type": "object", "required": "a"}}]},
         "tools[0].parameters", "Invalid schema for function 'f': tools[0].parameters: "
         "#/required: must be a list of property names, got 'a'"),
        ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning", "reasoning"),
        ({"input": "x", "background": True}, "background", "background"),
        # the chat checks' refusal, named as this API names the field
        ({"input": "x", "text": {"verbosity": "low"}}, "text.verbosity",
         'text.verbosity is not supported: the answer\'s length'),
        ({"input": "x", "truncation": "auto"}, "truncation", "truncation"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format", "text.format"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "max_output_tokens"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice", "tool_choice"),
        # the prompt alone is past the context: the input is at fault, not the output's room
        ({"input": "word " * 1200, "max_output_tokens": 4}, "input", "maximum context length"),
        # the Responses API's own shapes are named, not the chat API's
        ({"input": "x", "tools": [WEATHER], "tool_choice": "any"}, "tool_choice",
         '{"type": "function", "name": ...}'),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
         "text.format", "text.format.schema"),
        ({"input": [{"type": "function_call_output", "call_id": "c",
                     "output": [{"type": "input_image", "image_url": "x"}]}]},
         "input", "input[0].output[0]"),
        # found by fuzzing: a result left out was taken, as the text "null"
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input",
         "input[0] (a function_call_output) needs 'output'"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": "required", "ignore_eos": True},
         "ignore_eos", "no ignore_eos"),  # was a 500
        # OpenAI's bounds on metadata: 16 pairs, keys of 64 characters, values of 512
        ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata", "16"),
        ({"input": "x", "metadata": {"k" * 65: "v"}}, f"metadata.{'k' * 65}.[key]", "64"),
        ({"input": "x", "metadata": {"k": "v" * 513}}, "metadata.k", "512"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    server: str, fields: dict, param: str, says: str
):
    status, body = request("POST", f"{server}/v1/responses", {"model": "tiny", **fields})
    assert status == 400, body
    error = body["error"]
    assert error["param"] == param and says in error["message"], error


def test_an_unknown_model_is_a_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.responses.create(model="gpt-4o", input="x")


def test_langchain_on_the_responses_api_answers_as_on_chat(server: str):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    kw = {"model": "tiny", "base_url": server + "/v1", "api_key": "unused", "temperature": 0,
          "max_tokens": 8, "max_retries": 0}  # fmt: skip
    on_responses = chat_openai(use_responses_api=True, **kw).invoke("Hello there")
    on_chat = chat_openai(**kw).invoke("Hello there")
    assert on_responses.text == on_chat.text
    assert on_responses.usage_metadata["input_tokens"] == on_chat.usage_metadata["input_tokens"]
    streamed = "".join(
        c.text for c in chat_openai(use_responses_api=True, **kw).stream("Hello there")
    )
    assert streamed == on_chat.text


def test_llamaindex_on_the_responses_api_answers_as_on_chat(client: openai.OpenAI, server: str):
    responses_llm = pytest.importorskip("llama_index.llms.openai").OpenAIResponses
    from llama_index.core.llms import ChatMessage

    llm = responses_llm(model="tiny", api_base=server + "/v1", api_key="unused",
                        context_window=2048, temperature=0, max_output_tokens=8)  # fmt: skip
    answer = llm.chat([ChatMessage(role="user", content="Hello there")])
    c = chat(client, [{"role": "user", "content": "Hello there"}], 8)
    assert answer.message.content == c.choices[0].message.content


def test_a_stored_responses_input_items_are_listed_with_ids_and_pages(client: openai.OpenAI):
    items = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny", "id": "fco_mine"},
        {"role": "user", "content": [{"type": "input_text", "text": "So?"}]},
    ]  # fmt: skip
    r = client.responses.create(model="tiny", input=items, max_output_tokens=2, **GREEDY)
    newest_first = client.responses.input_items.list(r.id)
    assert [i.type for i in newest_first.data] == [
        "message", "function_call_output", "function_call", "message"]  # fmt: skip
    first = newest_first.data[-1]
    assert first.role == "user" and first.content[0].type == "input_text"
    assert first.content[0].text == "Weather in Paris?" and first.id.startswith("msg_")
    assert newest_first.data[1].id == "fco_mine" and not newest_first.has_more
    page = client.responses.input_items.list(r.id, order="asc", limit=3)
    assert [i.id for i in page.data] == [i.id for i in newest_first.data[::-1][:3]]
    assert page.has_more and page.last_id == page.data[-1].id
    rest = client.responses.input_items.list(r.id, order="asc", after=page.last_id)
    assert [i.id for i in rest.data] == [newest_first.data[0].id] and not rest.has_more
    with pytest.raises(openai.BadRequestError, match="after"):
        client.responses.input_items.list(r.id, after="msg_none")
    text = client.responses.create(model="tiny", input="Hi", max_output_tokens=2, **GREEDY)
    (only,) = client.responses.input_items.list(text.id).data
    assert only.content[0].text == "Hi" and only.status == "completed"


def test_a_langchain_tool_round_trip_on_the_responses_api_answers_as_on_chat(server: str):
    """LangChain sends the model's function_call item (with its ids) and the tool's output back
    as input: the answer is the chat completion of the same conversation."""
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        return "sunny"  # an enum: a random model's arguments close at once

    kw = {"model": "tiny", "base_url": server + "/v1", "api_key": "unused", "temperature": 0,
          "max_retries": 0}  # fmt: skip
    on_responses = langchain_openai.ChatOpenAI(use_responses_api=True, max_tokens=300, **kw)
    asked = on_responses.bind_tools([get_weather], tool_choice="get_weather").invoke(
        [HumanMessage("Weather in Paris?")]
    )
    (call,) = asked.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    history = [HumanMessage("Weather in Paris?"), asked,
               ToolMessage("sunny", tool_call_id=call["id"])]  # fmt: skip
    short = langchain_openai.ChatOpenAI(use_responses_api=True, max_tokens=6, **kw)
    answer = short.bind_tools([get_weather]).invoke(history)
    on_chat = langchain_openai.ChatOpenAI(max_tokens=6, **kw).bind_tools([get_weather])
    expected = on_chat.invoke(history)
    assert answer.text == expected.text
    assert answer.usage_metadata["input_tokens"] == expected.usage_metadata["input_tokens"]
