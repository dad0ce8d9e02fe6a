"""Tool calling's pure parts: the request's checks, the rendered turns and the parser."""

from __future__ import annotations

import json

import pytest

from server.api.tool_call_parser import ToolCallParser
from server.api.tool_request import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolRequest,
    check_tool_calls,
    render_tool_turns,
)
from server.errors import ApiError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "now"}}


def block(name: str, arguments: object) -> str:
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def parse(text: str, tools: ToolRequest, pieces: int = 1) -> tuple[str, list]:
    """The whole text through a parser, fed in `pieces`-character pieces after the primer."""
    parser = ToolCallParser(tools.names, tools.forced, tools.primer())
    out = []
    for at in range(0, len(text), pieces):
        piece, _ = parser.feed(text[at : at + pieces])
        out.append(piece)
    rest, _ = parser.finish()
    return "".join(out) + rest, parser.calls


def test_no_tools_or_none_asks_for_nothing():
    assert ToolRequest.of(None, None, None) is None
    assert ToolRequest.of([], "auto", None) is None
    assert ToolRequest.of([WEATHER], "none", None) is None
    auto = ToolRequest.of([WEATHER, CLOCK], None, None)
    assert auto is not None and auto.names == {"get_weather", "now"}
    assert not auto.required and auto.parallel and auto.primer() == "" and auto.stops() == []


@pytest.mark.parametrize(
    ("tools", "choice", "message", "param"),
    [
        (None, "required", "needs tools", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "not among", "tool_choice"),
        ([WEATHER], {"type": "function"}, "tool_choice must be", "tool_choice"),
        ([WEATHER], "sometimes", "tool_choice must be", "tool_choice"),
        ([{"type": "retrieval"}], None, "tools[0]", "tools"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name",
         "tools"),
        ([WEATHER, {"type": "function", "function": "x"}], None, "tools[1].function", "tools"),
        ([WEATHER, WEATHER], None, "given twice", "tools"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], None,
         "Invalid schema for function 'f': tools[0].function.parameters: #: must be a JSON "
         "Schema object, got []", "tools[0].function.parameters"),
    ],
)  # fmt: skip
def test_bad_tools_and_choices_are_400s_naming_the_field(tools, choice, message, param):
    with pytest.raises(ApiError) as caught:
        ToolRequest.of(tools, choice, None)
    assert caught.value.status == 400 and message in caught.value.message
    assert caught.value.param == param


def test_forced_and_required_calls_are_primed():
    named = ToolRequest.of([WEATHER, CLOCK], {"type": "function", "function": {"name": "now"}}, None)
    assert named.forced == "now" and named.required and not named.parallel
    assert named.primer() == TOOL_CALL_OPEN + '\n{"name": "now", "arguments": '
    assert named.stops() == [TOOL_CALL_CLOSE]
    required = ToolRequest.of([WEATHER, CLOCK], "required", False)
    assert required.forced is None and required.primer().endswith('{"name": "')
    assert required.stops() == [TOOL_CALL_CLOSE]
    assert "You must call a function" in required.system_text()
    only = ToolRequest.of([WEATHER], "required", None)
    assert only.forced == "get_weather" and only.parallel  # further calls may follow
    assert "You must call the function get_weather" in only.system_text()
    # the decoder holds each forced call to a call: a named one to its arguments' schema, a
    # required one to one of the names, then that function's arguments
    assert named.constrained and named.call_tags() is None
    assert named.arguments_schema() == {"type": "object", "properties": {}}
    assert not required.constrained and required.arguments_schema() is None
    assert required.call_tags() == {
        'get_weather", "arguments": ': WEATHER["function"]["parameters"],
        'now", "arguments": ': {"type": "object", "properties": {}},
    }
    auto = ToolRequest.of([WEATHER, CLOCK], "auto", None)
    assert auto is not None and auto.call_tags() is None and not auto.constrained


def test_a_required_call_of_a_tool_whose_schema_cannot_be_enforced_takes_any_object():
    odd = {"type": "function", "function": {"name": "odd", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}}}
    required = ToolRequest.of([odd, CLOCK], "required", None)
    assert required.call_tags() == {
        'odd", "arguments": ': None, 'now", "arguments": ': {"type": "object", "properties": {}}
    }


def test_turns_render_as_blocks_and_the_tools_join_the_system_message():
    tools = ToolRequest.of([WEATHER], None, None)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": check_tool_calls([
            {"id": "a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function",
             "function": {"name": "get_weather", "arguments": "not json"}},
        ], 2)},
        {"role": "tool", "content": "sunny", "tool_call_id": "a"},
        {"role": "tool", "content": "rain", "tool_call_id": "b"},
    ]  # fmt: skip
    out = render_tool_turns(messages, tools)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(WEATHER["function"]["parameters"]) in out[0]["content"]
    assert out[2]["content"] == (
        block("get_weather", {"city": "Paris"}) + "\n" + block("get_weather", "not json")
    )
    assert out[3]["content"] == (
        "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
    )
    assert all(set(m) <= {"role", "content", "name"} for m in out)
    # no system message: one is put first (and past tool turns render without tools)
    assert render_tool_turns(messages[1:2], tools)[0]["role"] == "system"
    assert render_tool_turns(messages[3:4], None) == [
        {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    ]


def test_malformed_past_calls_are_400s():
    with pytest.raises(ApiError, match=r"messages\[3\].tool_calls\[0\]"):
        check_tool_calls([{"id": "a", "function": {"arguments": "{}"}}], 3)
    with pytest.raises(ApiError, match="must be a list"):
        check_tool_calls({"id": "a"}, 0)


@pytest.mark.parametrize("pieces", [1, 2, 3, 5, 7, 11, 1000])  # the closing tag split every way
def test_parser_splits_content_and_calls_however_the_text_arrives(pieces):
    tools = ToolRequest.of([WEATHER, CLOCK], None, None)
    text = (
        "Let me check. a < b <tool" + " " + block("get_weather", {"city": "Paris"})
        + "\n" + block("now", {}) + "\nDone <tool_call"
    )  # fmt: skip
    content, calls = parse(text, tools, pieces)
    assert content == "Let me check. a < b <tool \n\nDone <tool_call"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("now", {}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


def test_blocks_that_are_not_calls_stay_content_and_unclosed_ones_still_count():
    tools = ToolRequest.of([WEATHER], None, None)
    unknown = block("delete_everything", {})
    content, calls = parse("x " + unknown, tools)
    assert content == "x " + unknown and calls == []
    garbage = f"{TOOL_CALL_OPEN}hello{TOOL_CALL_CLOSE}"
    assert parse(garbage, tools) == (garbage, [])
    # EOS before the closing tag (or a stop at it): the block is read as if closed
    content, calls = parse(TOOL_CALL_OPEN + '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                           tools)  # fmt: skip
    assert content == "" and json.loads(calls[0].arguments) == {"city": "Oslo"}


def test_lenient_reading_of_a_small_models_json():
    tools = ToolRequest.of([WEATHER], None, None)
    extra_brace = TOOL_CALL_OPEN + '{"name": "get_weather", "arguments": {"city": "Rome"}}}'
    assert json.loads(parse(extra_brace, tools)[1][0].arguments) == {"city": "Rome"}
    as_text = TOOL_CALL_OPEN + '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    assert parse(as_text, tools)[1][0].arguments == '{"city": "Oslo"}'
    parameters = TOOL_CALL_OPEN + '{"name": "get_weather", "parameters": {"city": "Bern"}}'
    assert json.loads(parse(parameters, tools)[1][0].arguments) == {"city": "Bern"}


def test_forced_calls_keep_their_name_and_whatever_arguments_came():
    named = ToolRequest.of([WEATHER, CLOCK], {"type": "function", "function": {"name": "get_weather"}},
                           None)  # fmt: skip
    content, calls = parse('{"city": "Paris"}}\n', named, pieces=2)
    assert content == "" and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    # not JSON at all: OpenAI's own caveat (arguments may be invalid JSON); the name holds
    _, calls = parse("city=Paris }", named)
    assert calls[0].name == "get_weather" and calls[0].arguments == "city=Paris"
    required = ToolRequest.of([WEATHER, CLOCK], "required", None)
    _, calls = parse('now", "arguments": {}}\n' + TOOL_CALL_CLOSE, required)
    assert [(c.name, c.arguments) for c in calls] == [("now", "{}")]
    # the primed name holds for the first block only
    only = ToolRequest.of([WEATHER], "required", None)
    content, calls = parse('{"city": "Oslo"}}' + TOOL_CALL_CLOSE + block("Oslo", {}), only)
    assert [c.name for c in calls] == ["get_weather"] and content == block("Oslo", {})


def test_json_nested_past_the_parsers_stack_is_text_not_a_server_error():
    # before: json.loads raised RecursionError (no ValueError), a 500 for the request
    deep = "[" * 100_000 + "]" * 100_000
    tools = ToolRequest.of([WEATHER], None, None)
    past = check_tool_calls(
        [{"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": deep}}],
        1,
    )
    rendered = render_tool_turns([{"role": "assistant", "content": "", "tool_calls": past}], tools)
    assert rendered[1]["content"] == block("get_weather", deep)
    written = TOOL_CALL_OPEN + '{"name": "get_weather", "arguments": ' + deep + "}"
    content, calls = parse(written, tools)  # read leniently: the arguments as written
    assert (content, [(c.name, c.arguments) for c in calls]) == ("", [("get_weather", deep)])


def test_a_primed_block_cut_short_gives_only_what_the_model_wrote():
    """max_tokens inside a required call's name gave the server's primer back as content
    (`<tool_call>\\n{"name": "get_wea`), and a cut before the arguments gave `{}`: arguments
    the model never wrote, missing what the schema requires."""
    required = ToolRequest.of([WEATHER, CLOCK], "required", None)
    assert parse("get_wea", required) == ("get_wea", [])
    content, calls = parse('get_weather", "arguments', required)
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", "")]
    content, calls = parse('get_weather", "arguments": {"city": "Par', required)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Par')]
    named = ToolRequest.of([WEATHER], {"type": "function", "function": {"name": "get_weather"}},
                           None)  # fmt: skip
    assert [(c.name, c.arguments) for c in parse("", named)[1]] == [("get_weather", "")]
    # a closed block without arguments is a call of none, as before
    auto = ToolRequest.of([WEATHER, CLOCK], None, None)
    _, calls = parse(TOOL_CALL_OPEN + '{"name": "now"}' + TOOL_CALL_CLOSE, auto)
    assert [(c.name, c.arguments) for c in calls] == [("now", "{}")]


@pytest.mark.parametrize(
    ("text", "content"),
    [
        (block("now", {}) + "\n" + block("now", {}) + "\n", ""),
        ("\n " + block("now", {}), ""),
        ("Hi \n" + block("now", {}) + "\n", "Hi"),
        (" Hi " + block("now", {}) + "\n\nbye \n", " Hi \n\nbye"),
        (block("now", {}) + "\n ok", "ok"),
        ("  no call here \n", "  no call here \n"),
    ],
)
def test_white_space_at_the_ends_of_content_with_calls_is_the_same_streamed(text, content):
    """A stream sent the white space between two calls as content where the whole answer
    stripped it: with calls, the content's ends are trimmed as the text arrives, wherever it
    is cut (leading white space only when a call comes first)."""
    tools = ToolRequest.of([WEATHER, CLOCK], None, None)
    for pieces in (1, 2, 3, 1000):
        assert parse(text, tools, pieces)[0] == content
