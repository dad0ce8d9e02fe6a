"""A Responses API request as chat messages and fields, and its output items as they are
built, alone (no server)."""

from __future__ import annotations

import pytest

from server.api.chat_job import choice_parser
from server.api.openai_models import ChatTokenLogprob
from server.api.response_output import ResponseOutput
from server.api.responses import written
from server.api.responses_input import chat_request_of, input_messages
from server.api.responses_models import ResponsesRequest
from server.api.tool_request import ToolRequest
from server.engine import JobOutput
from server.errors import ApiError


def test_function_calls_join_the_assistant_message_before_them_and_outputs_are_tool_turns():
    call = {"type": "function_call", "name": "f", "arguments": "{}"}
    messages = input_messages([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Let me look."},
        {**call, "call_id": "c1"},
        {**call, "call_id": "c2"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "two"}]},
        {**call, "call_id": "c3"},
    ])  # fmt: skip
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[1]["content"] == "Let me look."
    assert messages[3] == {"role": "tool", "tool_call_id": "c2", "content": "two"}
    assert messages[4]["content"] is None and messages[4]["tool_calls"][0]["id"] == "c3"


def test_the_chat_request_puts_instructions_first_and_maps_the_fields():
    body = ResponsesRequest.model_validate({
        "model": "m", "input": "Q", "instructions": "Be brief.", "max_output_tokens": 5,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {}}},
        "include": ["message.output_text.logprobs"], "seed": 7, "n": 3,
    })  # fmt: skip
    chat = chat_request_of(body, [{"role": "user", "content": "before"}])
    assert [m["content"] for m in chat["messages"]] == ["Be brief.", "before", "Q"]
    assert chat["max_completion_tokens"] == 5
    assert chat["tools"] == [{"type": "function",
                              "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "s", "schema": {}}}
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 0)
    assert chat["seed"] == 7 and "n" not in chat  # vLLM's sampling fields pass; n is not one


@pytest.mark.parametrize(
    ("item", "says"),
    [("text", "must be an object"), ({"role": "tool", "content": "x"}, "role"),
     ({"role": "user", "content": 3}, "content"),
     ({"type": "function_call", "call_id": "c", "name": "f"}, "'arguments'"),
     ({"type": "function_call_output", "output": "x"}, "'call_id'")],
)  # fmt: skip
def test_a_bad_input_item_is_named(item: object, says: str):
    with pytest.raises(ApiError, match=says) as bad:
        input_messages([{"role": "user", "content": "fine"}, item])  # type: ignore[list-item]
    assert "input[1]" in bad.value.message and bad.value.param == "input"


def test_white_space_before_a_call_is_no_message_and_a_cut_call_is_incomplete():
    output = ResponseOutput(logprobs=False)
    assert output.text("\n ") == []
    events = output.call("c1", "f", '{"a":', cut=True)
    events += output.finish(incomplete=True)
    assert [item.type for item in output.items] == ["function_call"]
    assert output.items[0].status == "incomplete"
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in events] == [0, 1, 2, 3]


def test_an_answer_of_white_space_only_is_still_a_message():
    output = ResponseOutput(logprobs=False)
    output.text("  ")
    output.finish(incomplete=False)
    assert output.items[0].type == "message" and output.items[0].content[0].text == "  "
    assert output.items[0].status == "completed"


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_items_keep_the_order_the_model_wrote_them_in_whatever_the_chunks(step: int):
    """Text after a call is a message after it, white space next to calls is none (a message
    kept the white space before a call), and a stream's chunks (any size; 1000: the
    non-streamed answer, fed whole) give the same items."""
    tools = ToolRequest.of(
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "auto", True,
    )  # fmt: skip
    call = '<tool_call>{"name": "f", "arguments": {"a": %d}}</tool_call>'
    text = f"Sure. {call % 1}\n{call % 2}\nDone."
    output, parser = ResponseOutput(logprobs=False), choice_parser(tools)
    chunks = [text[i : i + step] for i in range(0, len(text), step)]
    for i, chunk in enumerate(chunks):
        end = JobOutput(0, 0, finished=True, finish_reason="stop")
        written(output, parser, chunk, [], end if i == len(chunks) - 1 else None)
    output.finish(incomplete=False)
    said = [(i.content[0].text if i.type == "message" else i.arguments) for i in output.items]
    assert said == ["Sure.", '{"a": 1}', '{"a": 2}', "Done."]


def test_no_empty_text_delta_is_sent():
    """A chunk whose text is held back (a partial UTF-8 character, a possible tool-call tag)
    sends no delta: OpenAI's deltas are never empty."""
    output = ResponseOutput(logprobs=False)
    assert [e["type"] for e in output.text("Hi")][-1] == "response.output_text.delta"
    assert output.text("") == []
    assert [e["delta"] for e in output.text(" there")] == [" there"]
    events = output.finish(incomplete=False)
    assert events[0]["text"] == "Hi there"
    assert [e["sequence_number"] for e in events] == [4, 5, 6]


def test_logprobs_of_text_the_parser_held_back_come_with_it():
    """A chunk whose text may open a tool call ("<to") is held back; its tokens' logprobs
    are not lost when the text turns out to be content."""
    tools = ToolRequest.of(
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "auto", True,
    )  # fmt: skip
    output, parser = ResponseOutput(logprobs=True), choice_parser(tools)
    chunks, events = ["Hi <to", "ol", "s"], []
    for i, chunk in enumerate(chunks):
        entry = ChatTokenLogprob(token=chunk, logprob=-1.0, bytes=[], top_logprobs=[])
        end = JobOutput(0, 0, finished=True, finish_reason="stop")
        events += written(output, parser, chunk, [entry], end if i == len(chunks) - 1 else None)
    output.finish(incomplete=False)
    (message,) = output.items
    assert message.content[0].text == "Hi <tools"
    assert [e.token for e in message.content[0].logprobs] == chunks
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [e["delta"] for e in deltas] == ["Hi", " <tools"]  # none empty; the space waits
    assert [e["token"] for d in deltas for e in d["logprobs"]] == chunks
