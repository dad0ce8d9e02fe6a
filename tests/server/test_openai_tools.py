"""Tool calling and JSON mode through the OpenAI-compatible API: the official client and
LangChain's `bind_tools` against a real server, checked against the engine's greedy run of the
prompt the tools render to (a tiny random model writes no sensible call, so the check is that
the server turns exactly what the model wrote into the answer)."""

from __future__ import annotations

import json
import re

import openai
import pytest

from server.api.tool_call_parser import ToolCallParser
from server.api.tool_request import ToolRequest, render_tool_turns
from server.engine import LLMEngine, SamplingParams
from tests.server.http_client import request
from tests.server.test_tool_calls import WEATHER

pytestmark = pytest.mark.slow

CLOCK = {"type": "function", "function": {"name": "now", "description": "The time"}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def expected(engine: LLMEngine, messages: list[dict], tools: ToolRequest, max_tokens: int):
    """(prompt ids, content, calls as (name, arguments), finish_reason) of the greedy run."""
    text = engine.tokenizer.apply_chat_template(render_tool_turns(messages, tools), True)
    ids = engine.tokenizer.encode(text + tools.primer())
    sampling = SamplingParams(
        max_tokens=max_tokens, temperature=0, stop=tools.stops(), json_object=tools.constrained,
        json_schema=tools.arguments_schema(), tagged_json=tools.call_tags(),
    )  # fmt: skip
    out = engine.generate([ids], sampling)[0]
    parser = ToolCallParser(tools.names, tools.forced, tools.primer())
    content = parser.feed(out.text)[0] + parser.finish()[0]
    calls = [(c.name, c.arguments) for c in parser.calls]
    # a named function's call finishes as "stop", as OpenAI's API (and vLLM) answer it
    called = calls and not tools.named
    reason = "length" if out.finish_reason == "length" else ("tool_calls" if called else "stop")
    return ids, content, calls, reason


def test_a_named_tool_choice_answers_with_that_call(client: openai.OpenAI, engine: LLMEngine):
    tools = ToolRequest.of([WEATHER, CLOCK], NAMED, None)
    ids, content, calls, reason = expected(engine, ASK, tools, 40)
    assert [name for name, _ in calls] == ["get_weather"]
    # its arguments are generated in JSON mode: an object, and the answer ends with it
    assert reason == "stop" and isinstance(json.loads(calls[0][1]), dict)
    done = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=NAMED, max_tokens=40,
        temperature=0,
    )  # fmt: skip
    choice = done.choices[0]
    assert choice.finish_reason == reason
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == calls
    assert choice.message.tool_calls[0].id.startswith("call_")
    assert choice.message.content == (content.strip() or None)
    assert done.usage.prompt_tokens == len(ids)  # the tools' description and the primer
    # streamed: the same call, whole, in one delta; then the finish
    chunks = list(client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=NAMED, max_tokens=40,
        temperature=0, stream=True,
    ))  # fmt: skip
    deltas = [c.choices[0].delta for c in chunks]
    streamed = [t for d in deltas for t in d.tool_calls or []]
    assert [(t.index, t.function.name, t.function.arguments) for t in streamed] == [
        (0, *calls[0])
    ]
    assert "".join(d.content or "" for d in deltas).strip() == content.strip()
    assert chunks[-1].choices[0].finish_reason == reason


@pytest.mark.parametrize("stream", [False, True])
def test_a_required_call_among_several_tools_is_a_call_of_one_of_them(
    client: openai.OpenAI, engine: LLMEngine, stream: bool
):
    """The model picks the function, and the decoder holds it to one of the tools' names and
    to that function's parameters (a tiny random model writes no call on its own)."""
    tools = ToolRequest.of([WEATHER, CLOCK], "required", None)
    ids, content, calls, reason = expected(engine, ASK, tools, 64)
    [(name, arguments)] = calls
    assert name in ("get_weather", "now") and reason == "tool_calls"
    parsed = json.loads(arguments)
    assert isinstance(parsed, dict)
    if name == "get_weather":
        assert set(parsed) <= {"city"} and all(isinstance(v, str) for v in parsed.values())
    else:
        assert parsed == {}  # its parameters have no properties
    kwargs = dict(model="tiny", messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required",
                  max_tokens=64, temperature=0)  # fmt: skip
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        made = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        assert made == calls and choice.finish_reason == reason
        assert choice.message.content == (content.strip() or None)
        return
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in streamed] == calls
    assert chunks[-1].choices[0].finish_reason == reason


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
def test_a_forced_calls_streamed_message_is_the_unstreamed_one(
    client: openai.OpenAI, tool_choice: object
):
    """A forced call's answer has no content: null unstreamed; streamed, the role delta
    opened it with "", so the client's stream helper ended with content "" (OpenAI's role
    delta of a call has no content)."""
    kwargs = dict(model="tiny", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=tool_choice,
                  max_tokens=64, temperature=0)  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0]
    with client.chat.completions.stream(**kwargs) as stream:
        for _ in stream:
            pass
        # the snapshot, not get_final_completion(): that raises when a call was cut short
        streamed = stream.current_completion_snapshot.choices[0]
    assert whole.message.content is None and streamed.message.content is None
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls
    ]
    assert streamed.finish_reason == whole.finish_reason


def test_logprobs_with_tools_cover_every_generated_token(client: openai.OpenAI):
    """As vLLM: a call's tokens have their logprobs too (streamed, they come at the end, as the
    call's text is never sent as content)."""
    kw = {"model": "tiny", "messages": ASK, "tools": [WEATHER], "tool_choice": NAMED,
          "max_tokens": 40, "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    done = client.chat.completions.create(**kw)
    assert done.choices[0].message.tool_calls
    entries = done.choices[0].logprobs.content
    assert len(entries) == done.usage.completion_tokens and all(len(e.top_logprobs) == 2
                                                                for e in entries)  # fmt: skip
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [e for c in chunks for e in (c.choices[0].logprobs.content if c.choices
                                            and c.choices[0].logprobs else [])]  # fmt: skip
    # the same tokens; their logprobs equal to float32 rounding: the streamed request's prompt
    # comes from the prefix cache, and torch's matmul (the linear layers on CPUs without
    # AVX2) sums a row differently in a product of another shape
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)


def test_auto_tools_are_described_to_the_model_and_plain_text_stays_content(
    client: openai.OpenAI, engine: LLMEngine
):
    tools = ToolRequest.of([WEATHER], "auto", None)
    ids, content, calls, reason = expected(engine, ASK, tools, 12)
    done = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], max_tokens=12, temperature=0
    )
    assert done.usage.prompt_tokens == len(ids)
    assert calls == [] and done.choices[0].message.tool_calls is None
    assert done.choices[0].message.content == content
    assert done.choices[0].finish_reason == reason


def test_past_calls_and_results_render_as_turns(client: openai.OpenAI, engine: LLMEngine):
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    tools = ToolRequest.of([WEATHER], None, None)
    plain = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [
            {"name": "get_weather", "arguments": '{"city": "Paris"}'}]},
        {"role": "tool", "content": "sunny"},
    ]  # fmt: skip
    ids, content, _, _ = expected(engine, plain, tools, 8)
    done = client.chat.completions.create(
        model="tiny", messages=history, tools=[WEATHER], max_tokens=8, temperature=0
    )
    assert done.usage.prompt_tokens == len(ids)
    assert done.choices[0].message.content == content


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice", "not among"),
        ({"tools": [WEATHER], "tool_choice": NAMED, "extra_body": {"continue_final_message": True,
          "add_generation_prompt": False}}, "tool_choice", "add_generation_prompt"),
        ({"functions": [{"name": "f"}]}, "functions", "use tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format", "needs"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"s": {"type": "string", "pattern": "(?=a)"}}}}}},
         "response_format", "#/properties/s: the pattern cannot be followed: a group extension"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}}}}},
         "response_format", "#/properties/n: multipleOf cannot be enforced"),
        ({"response_format": {"type": "xml"}}, "response_format", "'xml' is not supported"),
        ({"extra_body": {"guided_choice": ["a"], "guided_json": {"type": "object"}}},
         "guided_choice", "not guided_json, guided_choice together"),
        ({"extra_body": {"guided_choice": "a"}}, "guided_choice", "list of non-empty strings"),
        ({"extra_body": {"guided_json": "{nope"}}, "guided_json", "not JSON"),
        ({"extra_body": {"guided_regex": "(?=a)b"}}, "guided_regex", "lookaround"),
        ({"extra_body": {"guided_regex": "a", "guided_choice": ["a"]}}, "guided_regex",
         "guided_choice, guided_regex together"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"guided_choice": ["a"]}},
         "guided_choice", "not response_format, guided_choice together"),
        ({"tools": [WEATHER], "extra_body": {"guided_choice": ["a"]}}, "response_format",
         "does not go with tools"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format",
         "does not go with tools"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}},
         "ignore_eos", "constrained output ends"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
         "messages", "messages[0].tool_calls[0]"),
        ({"extra_body": {"structured_outputs": {"structural_tag": "{}"}}},
         "structured_outputs", "structured_outputs.structural_tag is not supported"),
        ({"extra_body": {"structured_outputs": {"choice": ["a"], "regex": "a"}}},
         "structured_outputs", "exactly one of json, json_object, choice, regex, grammar, got "
         "choice, regex"),
        ({"extra_body": {"structured_outputs": {"grammar": "root ::= root 'a' | 'b'"}}},
         "structured_outputs", "structured_outputs.grammar: left recursion: root -> root"),
        ({"extra_body": {"guided_grammar": "root ::= [^\\x00-\\U0010FFFF]"}}, "guided_grammar",
         "guided_grammar: the rule 'root' can never end: it has no sentence"),
        ({"extra_body": {"structured_outputs": {"regex": "a[^\x00-\U0010ffff]"}}},
         "structured_outputs", "structured_outputs.regex: the pattern 'a[^\\x00-\\U0010ffff]' "
         "matches no text"),
        ({"extra_body": {"guided_grammar": "start: 'a'"}}, "guided_grammar",
         "guided_grammar: grammar line 1, column 1: a rule (name ::= ...) expected"),
        ({"extra_body": {"structured_outputs": {"whitespace_pattern": " ", "json_object": True}}},
         "structured_outputs", "whitespace_pattern is not supported"),
        ({"extra_body": {"structured_outputs": "json"}}, "structured_outputs", "must be an object"),
        ({"extra_body": {"structured_outputs": {"json": {"type": "string", "pattern": "a"}}}},
         "structured_outputs", "structured_outputs.json: the schema"),
        ({"extra_body": {"structured_outputs": {"regex": "(?=a)"}}}, "structured_outputs",
         "structured_outputs.regex: "),
        ({"extra_body": {"structured_outputs": {"choice": []}}}, "structured_outputs",
         "structured_outputs.choice must be a list"),
        ({"response_format": {"type": "json_object"},
          "extra_body": {"structured_outputs": {"choice": ["a"]}}},
         "structured_outputs", "not response_format, structured_outputs together"),
        ({"tools": [WEATHER], "extra_body": {"structured_outputs": {"json_object": True}}},
         "response_format", "does not go with tools"),
        # a forced call ends when it is complete (these were 500s)
        ({"tools": [WEATHER], "tool_choice": "required", "extra_body": {"ignore_eos": True}},
         "ignore_eos", "no ignore_eos"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function",
                                             "function": {"name": "get_weather"}},
          "extra_body": {"min_tokens": 2}}, "min_tokens", "no min_tokens"),
        # found by fuzzing: the tools are described in the prompt, which a long description
        # made too long for a prompt whose messages are one short question
        ({"tools": [{"type": "function", "function": {"name": "f", "description": "w " * 1200}}]},
         "messages", "in the prompt, the tools' descriptions included, 4 for the completion"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s_naming_the_field(client: openai.OpenAI, extra, param, message):
    body = {"model": "tiny", "messages": ASK, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.body["param"] == param and message in caught.value.body["message"]
    # and the server goes on
    assert client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2).choices


def weather_with(parameters: object) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"type": "object", "properties": {"city": {"type": "strng"}}},
         "#/properties/city/type: must be one of object, array, string, number, integer, "
         "boolean, null or a list of them without repeats, got 'strng'"),
        ({"type": "object", "properties": []}, "#/properties: must be an object of schemas"),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": "1"}}},
         "#/properties/n/minimum: must be a number, got '1'"),
        ({"type": "object", "anyOf": []}, "#/anyOf: must be a non-empty list of schemas"),
        ({"type": "string"}, '#/type: the schema must be of type "object"'),
        ([], "#: must be a JSON Schema object, got []"),
    ],
)  # fmt: skip
def test_tool_parameters_that_are_no_valid_json_schema_are_400s_naming_the_tool(
    client: openai.OpenAI, parameters: object, problem: str
):
    """As OpenAI answers them: the function's name, the field and what is wrong in it."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", messages=ASK, tools=[CLOCK, weather_with(parameters)], max_tokens=2
        )
    error = caught.value.body
    assert error["message"].startswith(
        f"Invalid schema for function 'get_weather': tools[1].function.parameters: {problem}"
    ), error
    assert error["param"] == "tools[1].function.parameters"
    assert error["code"] == "invalid_function_parameters" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "parameters",
    [
        None, {}, {"type": "object", "properties": {}}, {"type": "object"},
        {"type": ["object", "null"], "properties": {"q": {"type": "string"}}, "required": ["q"]},
        # valid, though the decoder cannot enforce it: taken, its arguments any JSON object
        {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5},
                                          "tags": {"type": "array", "uniqueItems": True}}},
        # older drafts' forms
        {"type": "object", "properties": {"n": {"type": "number", "minimum": 0,
                                                "exclusiveMinimum": True}},
         "definitions": {"x": {"type": "string"}}},
    ],
)  # fmt: skip
def test_valid_tool_parameters_are_taken(client: openai.OpenAI, parameters: object):
    tool = weather_with(parameters)
    if parameters is None:
        del tool["function"]["parameters"]
    done = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[tool], tool_choice=NAMED, max_tokens=4
    )
    assert done.choices[0].finish_reason in ("stop", "length")


def test_langchain_bind_tools(server: str, engine: LLMEngine) -> None:
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        base_url=server + "/v1", api_key="unused", model="tiny", temperature=0, max_tokens=16
    )
    forced = llm.bind_tools([get_weather], tool_choice="get_weather")
    answer = forced.invoke("Weather in Paris?")
    # the tiny model's arguments are not JSON: LangChain files the call as invalid, by name
    made = [*answer.tool_calls, *answer.invalid_tool_calls]
    assert [c["name"] for c in made] == ["get_weather"] and made[0]["id"].startswith("call_")
    streamed = None
    for piece in forced.stream("Weather in Paris?"):
        streamed = piece if streamed is None else streamed + piece
    assert streamed is not None
    assert [c["name"] for c in streamed.tool_call_chunks] == ["get_weather"]
    # the call and its result go back as history
    result = ToolMessage("sunny", tool_call_id=made[0]["id"])
    follow = llm.bind_tools([get_weather]).invoke(
        [("human", "Weather in Paris?"), answer, result]
    )
    assert isinstance(follow.content, str)


def test_json_mode_answers_with_one_json_object(client: openai.OpenAI, engine: LLMEngine):
    text = engine.tokenizer.apply_chat_template(ASK, True)
    ref = engine.generate(
        [engine.tokenizer.encode(text)],
        SamplingParams(max_tokens=40, temperature=0, json_object=True),
    )[0]
    if ref.finish_reason == "stop":
        assert isinstance(json.loads(ref.text), dict)
    else:  # cut at max_tokens: still the start of one
        assert ref.text.lstrip().startswith("{")
    asked = {"model": "tiny", "messages": ASK, "max_tokens": 40, "temperature": 0,
             "response_format": {"type": "json_object"}}  # fmt: skip
    done = client.chat.completions.create(**asked)
    assert done.choices[0].message.content == ref.text
    assert done.choices[0].finish_reason == ref.finish_reason
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**asked, stream=True)
        if c.choices
    )
    assert streamed == ref.text
    # completions too (as vLLM takes it), sampled: still one object
    sampled = client.completions.create(
        model="tiny", prompt="Data:", max_tokens=60, temperature=1.0, seed=3,
        extra_body={"response_format": {"type": "json_object"}},
    )  # fmt: skip
    if sampled.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(sampled.choices[0].text), dict)
    else:
        assert sampled.choices[0].text.lstrip().startswith("{")


def test_json_schema_answers_follow_the_schema(client: openai.OpenAI, engine: LLMEngine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
              "kind": {"enum": ["cat", "dog"]}}, "required": ["ok", "kind"]}  # fmt: skip
    text = engine.tokenizer.apply_chat_template(ASK, True)
    ref = engine.generate(
        [engine.tokenizer.encode(text)],
        SamplingParams(max_tokens=60, temperature=0, json_object=True, json_schema=schema),
    )[0]
    done = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=60, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "pet", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert done.choices[0].message.content == ref.text
    if ref.finish_reason == "stop":
        value = json.loads(ref.text)
        assert isinstance(value["ok"], bool) and value["kind"] in ("cat", "dog")


def test_llamaindex_function_calling(server: str) -> None:
    """LlamaIndex's OpenAILike picks and calls a tool. The call's arguments follow the tool's
    schema ({"city": string}); a bias on the quote token makes the tiny model's string close at
    once, so the call completes as {"city": ""}."""
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    def get_weather(city: str) -> str:
        """Get the weather in a city."""
        return f"sunny in {city!r}"

    quote = request("POST", server + "/tokenize", {"prompt": '"'})[1]["tokens"]
    assert len(quote) == 1
    llm = OpenAILike(
        api_base=server + "/v1", api_key="unused", model="tiny", is_chat_model=True,
        is_function_calling_model=True, temperature=0, max_tokens=40,
        additional_kwargs={"logit_bias": {str(quote[0]): 100}},
    )  # fmt: skip
    tool = FunctionTool.from_defaults(fn=get_weather)
    response = llm.chat_with_tools([tool], user_msg="Weather in Paris?", tool_required=True)
    [selection] = llm.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs) == ("get_weather", {"city": ""})
    out = llm.predict_and_call([tool], user_msg="Weather in Paris?", tool_required=True)
    assert str(out) == "sunny in ''"


def test_vllm_guided_regex(client: openai.OpenAI, engine: LLMEngine):
    text = engine.tokenizer.apply_chat_template(ASK, True)
    pattern = r"(sunny|rain), \d{1,2} ?C"
    ref = engine.generate([engine.tokenizer.encode(text)],
                          SamplingParams(max_tokens=12, temperature=0, regex=pattern))[0]  # fmt: skip
    done = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=12,
                                          temperature=0, extra_body={"guided_regex": pattern})
    assert done.choices[0].message.content == ref.text
    if ref.finish_reason == "stop":
        assert re.fullmatch(pattern, ref.text)


SQL = """
root ::= "SELECT " column " FROM " table (" WHERE " condition)?
column ::= "col_" [1-3] | "*"
table ::= [a-z]+
condition ::= column " = " [0-9]+ | "(" condition ")"
"""


def test_vllm_structured_outputs(client: openai.OpenAI, engine: LLMEngine):
    """vLLM 0.12's `structured_outputs` asks for what the guided_* fields did, on both routes."""
    ids = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(ASK, True))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    cases = [
        ({"choice": ["sunny", "rainy"]}, {"choices": ["sunny", "rainy"]}),
        ({"regex": r"\d{2} ?C"}, {"regex": r"\d{2} ?C"}),
        ({"grammar": SQL}, {"grammar": SQL}),
        ({"json": schema}, {"json_object": True, "json_schema": schema}),
        ({"json": json.dumps(schema), "disable_fallback": True},
         {"json_object": True, "json_schema": schema}),
        ({"json_object": True, "json": None}, {"json_object": True}),
    ]  # fmt: skip
    for asked, sampling in cases:
        ref = engine.generate([ids], SamplingParams(max_tokens=20, temperature=0, **sampling))[0]
        done = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=20,
            temperature=0, extra_body={"structured_outputs": asked})  # fmt: skip
        assert done.choices[0].message.content == ref.text, asked
    ref = engine.generate([ids], SamplingParams(max_tokens=20, temperature=0, choices=["a b"]))[0]
    done = client.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0,
                                     extra_body={"structured_outputs": {"choice": ["a b"]}})
    assert done.choices[0].text == ref.text == "a b"
    # the older guided_grammar, sampled, on the completions route
    ref = engine.generate([ids], SamplingParams(max_tokens=30, temperature=1.0, seed=4,
                                                grammar=SQL))[0]  # fmt: skip
    done = client.completions.create(model="tiny", prompt=ids, max_tokens=30, temperature=1.0,
                                     seed=4, extra_body={"guided_grammar": SQL})
    assert done.choices[0].text == ref.text and ref.text.startswith("SELECT ")


def test_vllm_guided_choice_and_guided_json(client: openai.OpenAI, engine: LLMEngine):
    text = engine.tokenizer.apply_chat_template(ASK, True)
    ids = engine.tokenizer.encode(text)
    choices = ["sunny", "rainy", "no idea"]
    ref = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0, choices=choices))[0]
    done = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=8,
                                          temperature=0, extra_body={"guided_choice": choices})
    assert done.choices[0].message.content == ref.text and ref.text in choices
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    ref = engine.generate([ids], SamplingParams(max_tokens=30, temperature=0, json_object=True,
                                                json_schema=schema))[0]  # fmt: skip
    for guided in (schema, json.dumps(schema)):  # as an object, or as JSON text
        done = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=30,
                                              temperature=0, extra_body={"guided_json": guided})
        assert done.choices[0].message.content == ref.text
