"""ChatParrot and ParrotLLM against a live server (tiny random Llama), and the render route."""

from __future__ import annotations

import asyncio
import functools
import json
import operator
from typing import Any

import pytest
from langchain_core.messages import FunctionMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

import parrot_bridge.langchain as lc
from parrot_bridge.errors import ParrotError
from parrot_bridge.langchain import ChatParrot, ParrotLLM
from tests.bridge.langchain.json_bias import short_json_bias
from tests.server.http_client import request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat(parrot_url: str) -> ChatParrot:
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=10)


def test_exports() -> None:
    assert sorted(lc.__all__) == ["ChatParrot", "CompiledChain", "ParrotLLM", "TracedCall",
                                  "compile"]  # fmt: skip
    assert all(hasattr(lc, name) for name in lc.__all__)


def test_usage_is_the_servers_count(chat: ChatParrot, parrot_url: str) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage("Hello there")]
    reply = chat.invoke(messages)
    body = {"conversations": [[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hello there"}]]}  # fmt: skip
    status, rendered = request("POST", parrot_url + "/v1/chat/render", body)
    assert status == 200
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] == rendered["prompts"][0]["prompt_tokens"]
    assert 0 < usage["output_tokens"] <= 10
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["model_name"] == rendered["model"]
    streamed = None
    for chunk in chat.stream(messages):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.content == reply.content
    again = dict(streamed.usage_metadata or {})
    found, before = again.pop("input_token_details"), dict(usage)
    assert again == {k: v for k, v in usage.items() if k != "input_token_details"}
    # the same prompt again: what the prefix cache holds of it (its full blocks) was found
    assert found["cache_read"] >= before["input_token_details"]["cache_read"]
    assert found["cache_read"] > 0


def test_token_counts_are_the_served_models(chat: ChatParrot, parrot_url: str) -> None:
    """get_num_tokens and get_num_tokens_from_messages count with the model's tokenizer and
    chat template (the server's /tokenize): the latter is the usage a request reports."""
    messages = [SystemMessage("Be brief."), HumanMessage("Hello there, tokens")]
    reply = chat.invoke(messages)
    assert reply.usage_metadata is not None
    assert chat.get_num_tokens_from_messages(messages) == reply.usage_metadata["input_tokens"]
    text = "Count these words, please."
    _, got = request("POST", parrot_url + "/tokenize", {"prompt": text})
    assert chat.get_token_ids(text) == got["tokens"] and got["count"] > 0
    llm = ParrotLLM(base_url=parrot_url)
    assert llm.get_num_tokens(text) == got["count"]
    # with tools, their description counts as a request with them would
    tool = {"type": "function", "function": {"name": "f", "description": "Does f."}}
    with_tools = chat.bind_tools([tool]).invoke(messages)
    counted = chat.get_num_tokens_from_messages(messages, tools=[tool])
    assert counted == with_tools.usage_metadata["input_tokens"] > reply.usage_metadata[
        "input_tokens"
    ]


def test_llm_usage_is_the_servers_count(parrot_url: str) -> None:
    llm = ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=8)
    result = llm.generate(["Hello there", "Once upon"])
    plain = [request("POST", parrot_url + "/v1/completions",
                     {"model": llm._model_id({}), "prompt": p, "max_tokens": 8,
                      "temperature": 0})[1] for p in ("Hello there", "Once upon")]  # fmt: skip
    assert [g[0].text for g in result.generations] == [r["choices"][0]["text"] for r in plain]
    assert [g[0].generation_info["finish_reason"] for g in result.generations] == [
        r["choices"][0]["finish_reason"] for r in plain
    ]
    assert result.llm_output["token_usage"] == {
        key: sum(r["usage"][key] for r in plain)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    }


def test_stop_strings_cut_the_answer(chat: ChatParrot) -> None:
    full = chat.invoke("Hello").content
    assert isinstance(full, str) and len(full) > 3
    stop = full[2]
    cut = chat.invoke("Hello", stop=[stop]).content
    assert cut == full[: full.index(stop)]
    assert ChatParrot(base_url=chat.base_url, temperature=0, max_tokens=10,
                      stop=[stop]).invoke("Hello").content == cut  # fmt: skip


def test_async_matches_sync(chat: ChatParrot, parrot_url: str) -> None:
    llm = ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=8)

    async def run() -> tuple:
        return (
            await chat.ainvoke("Hi"),
            await chat.abatch(["Hi", "Yo"]),
            await llm.abatch(["Hi", "Yo"]),
            "".join([c async for c in llm.astream("Hi")]),
        )

    one, many, texts, streamed = asyncio.run(run())
    assert one.content == chat.invoke("Hi").content
    assert [m.content for m in many] == [m.content for m in chat.batch(["Hi", "Yo"])]
    assert texts == llm.batch(["Hi", "Yo"]) and streamed == texts[0]


def test_clear_errors(chat: ChatParrot) -> None:
    with pytest.raises(ValueError, match=r"messages\[1\]: FunctionMessage is not supported"):
        chat.invoke([HumanMessage("hi"), FunctionMessage("42", name="f")])
    with pytest.raises(ValueError, match="'image_url' content is not supported"):
        chat.invoke([HumanMessage([{"type": "image_url", "image_url": {"url": "x"}}])])
    with pytest.raises(ParrotError, match="cannot reach the Parrot server"):
        ChatParrot(base_url="http://127.0.0.1:9", max_retries=0).invoke("hi")
    with pytest.raises(ParrotError, match="does not exist"):
        chat.invoke("hi", model="no-such-model")


def test_render_route_is_documented_and_checks_its_input(parrot_url: str) -> None:
    status, doc = request("GET", parrot_url + "/openapi.json")
    assert status == 200 and "post" in doc["paths"]["/v1/chat/render"]
    assert "ChatRenderRequest" in doc["components"]["schemas"]
    bad = {"conversations": [[{"role": "user", "content": [{"type": "variable", "name": "1x"}]}]]}
    status, body = request("POST", parrot_url + "/v1/chat/render", bad)
    assert status == 400 and "name" in body["error"]["message"]


def test_penalties_reach_the_server(chat: ChatParrot, parrot_url: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "List animals"}],
            "temperature": 0, "max_tokens": 10, "frequency_penalty": -2.0}  # fmt: skip
    status, plain = request("POST", parrot_url + "/v1/chat/completions",
                            {**body, "model": chat._model_id({})})  # fmt: skip
    assert status == 200
    expected = plain["choices"][0]["message"]["content"]
    assert expected != chat.invoke("List animals").content, "the penalty changes nothing here"
    penalised = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=10,
                           frequency_penalty=-2.0)  # fmt: skip
    assert penalised.invoke("List animals").content == expected
    assert chat.invoke("List animals", frequency_penalty=-2.0).content == expected
    by_kwargs = ChatParrot(base_url=parrot_url, temperature=0, max_completion_tokens=10,
                           model_kwargs={"frequency_penalty": -2.0})  # fmt: skip
    assert by_kwargs.invoke("List animals").content == expected
    compiled = lc.compile(lc_prompt() | penalised)
    assert compiled.invoke({"q": "List animals"}).content == expected
    assert compiled.split_steps == set() and len(compiled.last_calls) == 1  # in the graph
    biased = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=10,
                        model_kwargs={"logit_bias": {"123": 100}})  # fmt: skip
    status, plain = request("POST", parrot_url + "/v1/chat/completions",
                            {**body, "model": chat._model_id({}), "logit_bias": {"123": 100},
                             "frequency_penalty": 0})  # fmt: skip
    assert status == 200
    assert biased.invoke("List animals").content == plain["choices"][0]["message"]["content"]
    assert lc.compile(lc_prompt() | biased).invoke({"q": "List animals"}).content == (
        plain["choices"][0]["message"]["content"]
    )
    llm = ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=10)
    completion = {"model": chat._model_id({}), "prompt": "Animals:", "temperature": 0,
                  "max_tokens": 10, "presence_penalty": -2.0}  # fmt: skip
    plain_text = request("POST", parrot_url + "/v1/completions", completion)[1]
    assert llm.invoke("Animals:", presence_penalty=-2.0) == plain_text["choices"][0]["text"]


def lc_prompt() -> Any:
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_template("{q}")


def test_llm_refuses_a_model_the_server_does_not_serve(parrot_url: str, served_model: str) -> None:
    # as OpenAI(model=...) gets /v1/completions' 404, not the served model under another name
    llm = ParrotLLM(base_url=parrot_url, model="not-served", max_tokens=3)
    for call in (lambda: llm.invoke("hi"), lambda: list(llm.stream("hi")),
                 lambda: asyncio.run(llm.ainvoke("hi")),
                 lambda: ParrotLLM(base_url=parrot_url, max_tokens=3).invoke("hi", model="x")):
        with pytest.raises(ParrotError, match="the model '.*' does not exist") as caught:
            call()
        assert caught.value.status == 404 and caught.value.code == "model_not_found"
    named = ParrotLLM(base_url=parrot_url, model=served_model, max_tokens=3)
    assert named.generate(["hi"]).llm_output["model_name"] == served_model


def test_bind_tools_calls_through_the_chat_api(chat: ChatParrot, parrot_url: str) -> None:
    """The answer is the server's: the same request over HTTP gives the same call (the tiny
    model's arguments are not JSON, so LangChain holds it as an invalid call, by name)."""
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    forced = chat.bind_tools([get_weather], tool_choice="get_weather")
    answer = forced.invoke("Weather in Paris?")
    body = {"model": chat._model_id({}), "messages": [{"role": "user", "content":
            "Weather in Paris?"}], "temperature": 0, "max_tokens": 10,
            "tools": [convert_to_openai_tool(get_weather)],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}  # fmt: skip
    status, plain = request("POST", parrot_url + "/v1/chat/completions", body)
    assert status == 200
    call = plain["choices"][0]["message"]["tool_calls"][0]["function"]
    made = [*answer.tool_calls, *answer.invalid_tool_calls]
    assert [(c["name"], c["args"]) for c in answer.invalid_tool_calls] == [
        (call["name"], call["arguments"])
    ] or [(c["name"], c["args"]) for c in answer.tool_calls] == [
        (call["name"], json.loads(call["arguments"]))
    ]
    assert answer.response_metadata["finish_reason"] == plain["choices"][0]["finish_reason"]
    streamed = None
    for piece in forced.stream("Weather in Paris?"):
        streamed = piece if streamed is None else streamed + piece
    assert [(c["name"], c["args"]) for c in streamed.tool_call_chunks] == [
        (call["name"], call["arguments"])
    ]
    # the call and its result as history; the tools' description counts in the prompt
    history = [HumanMessage("Weather in Paris?"), answer,
               ToolMessage("sunny", tool_call_id=made[0]["id"])]  # fmt: skip
    follow = chat.bind_tools([get_weather]).invoke(history)
    assert follow.usage_metadata["input_tokens"] == chat.get_num_tokens_from_messages(
        history, tools=[get_weather]
    )
    # compiled chains are graphs of semantic calls, which take no tools
    with pytest.raises(ValueError, match="cannot honour 'tool_choice', 'tools'"):
        lc.compile(lc_prompt() | forced).invoke({"q": "Weather in Paris?"})


def test_with_structured_output_by_function_calling_goes_through_a_forced_call(
    parrot_url: str,
) -> None:
    """A JSON-schema dict gives back the forced call's arguments, generated in JSON mode. The
    tiny model opens a string it never closes, so "}" is favoured by a logit bias: the first
    token that fits after "{" and its whitespace is then "}", and the answer ends there."""
    schema = {"title": "note", "description": "A short note", "type": "object",
              "properties": {"text": {"type": "string"}}}  # fmt: skip
    _, brace = request("POST", parrot_url + "/tokenize", {"prompt": "}"})
    assert len(brace["tokens"]) == 1
    llm = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=64,
                     model_kwargs={"logit_bias": {str(brace["tokens"][0]): 100}})  # fmt: skip
    structured = llm.with_structured_output(schema, method="function_calling", include_raw=True)
    result = structured.invoke("Take a note.")
    raw = result["raw"]
    assert raw.response_metadata["finish_reason"] == "stop"  # a named function's, as OpenAI's
    assert [(c["name"], c["args"]) for c in raw.tool_calls] == [("note", {})]
    assert result["parsed"] == {} and result["parsing_error"] is None


def test_bind_tools_takes_strict_as_chat_openai_does(chat: ChatParrot) -> None:
    """`strict=True` (a ChatOpenAI argument) sends OpenAI's strict schemas, which the server
    takes: the forced call's arguments follow the schema (a boolean closes at once)."""
    from langchain_core.tools import tool

    @tool
    def switch_lamp(on: bool) -> str:
        """Switch the lamp on or off."""
        return "done"

    strict = chat.bind_tools([switch_lamp], tool_choice="switch_lamp", strict=True, max_tokens=64)
    [spec] = strict.kwargs["tools"]  # type: ignore[attr-defined]
    assert spec == convert_to_openai_tool(switch_lamp, strict=True)
    assert spec["function"]["strict"] is True
    answer = strict.invoke("Lamp on?")
    assert [(c["name"], type(c["args"].get("on"))) for c in answer.tool_calls] == [
        ("switch_lamp", bool)
    ]


class Joke(BaseModel):
    """A joke."""

    setup: str
    punchline: str


NOTE = {"type": "json_schema", "json_schema": {"name": "note", "schema": {
    "type": "object", "properties": {"text": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def quoting(parrot_url: str) -> ChatParrot:
    """A model that writes short JSON: its strings close at once (`short_json_bias`; a
    schema's keys are written by the server)."""
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=64,
                      model_kwargs={"logit_bias": short_json_bias(parrot_url)})  # fmt: skip


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_answers_in_the_schema_by_each_method(
    method: str, quoting: ChatParrot
) -> None:
    """json_schema (the default, as ChatOpenAI's) is a reply the server's decoding keeps to the
    schema; function_calling a forced call. Before, every method was silently a forced call."""
    structured = quoting.with_structured_output(Joke, method=method, include_raw=True)
    result = structured.invoke("Tell me a joke.")
    assert result["parsed"] == Joke(setup="", punchline="") and result["parsing_error"] is None
    raw = result["raw"]
    if method == "json_schema":
        assert raw.tool_calls == [] and raw.response_metadata["finish_reason"] == "stop"
        assert json.loads(raw.content) == {"setup": "", "punchline": ""}
    else:
        assert [c["name"] for c in raw.tool_calls] == ["Joke"] and raw.content == ""
    plain = quoting.with_structured_output(Joke, method=method)
    assert list(plain.stream("Tell me a joke."))[-1] == result["parsed"]
    assert asyncio.run(plain.ainvoke("Tell me a joke.")) == result["parsed"]


def test_json_mode_and_a_bound_response_format_are_sent(
    quoting: ChatParrot, parrot_url: str
) -> None:
    """JSON mode answers one JSON object (any keys; "}" favoured, it is the empty one);
    `response_format` bound as ChatOpenAI takes it (a pydantic class, or OpenAI's dict) is
    followed by a plain call."""
    _, brace = request("POST", parrot_url + "/tokenize", {"prompt": "}"})
    closing = {str(brace["tokens"][0]): 100}
    json_mode = quoting.with_structured_output(
        method="json_mode", include_raw=True, logit_bias=closing
    )
    result = json_mode.invoke("Hi")
    raw = result["raw"]
    assert raw.tool_calls == [] and result["parsed"] == {} == json.loads(raw.content)
    reply = quoting.bind(response_format=Joke).invoke("Tell me a joke.")
    assert Joke.model_validate_json(reply.content) == Joke(setup="", punchline="")
    # parsed too, as ChatOpenAI's message has it; None where the reply was cut short
    assert reply.additional_kwargs["parsed"] == Joke(setup="", punchline="")
    cut = quoting.bind(response_format=Joke, max_tokens=2).invoke("Tell me a joke.")
    assert cut.response_metadata["finish_reason"] == "length"
    assert cut.additional_kwargs["parsed"] is None
    assert "parsed" not in quoting.invoke("Hi", response_format=NOTE).additional_kwargs
    with pytest.raises(ParrotError, match="#/properties/a: not cannot be enforced"):
        # the server's own check still answers what the client lets through
        quoting.invoke("Hi", response_format={"type": "json_schema", "json_schema": {
            "name": "n", "schema": {"type": "object", "properties": {"a": {"not": {}}}}}})


def test_logprobs_and_n_come_back_as_chat_openai_reports_them(
    chat: ChatParrot, parrot_url: str
) -> None:
    """`logprobs`/`top_logprobs` (fields or options) give each token's logprobs in
    response_metadata, streamed too; `n` samples are the result's generations. Both were
    refused before, as options the model could not honour."""
    scored = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=6, logprobs=True,
                        top_logprobs=2)  # fmt: skip
    reply = scored.invoke("Hello there")
    body = {"model": chat._model_id({}), "messages": [{"role": "user", "content": "Hello there"}],
            "temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    _, plain = request("POST", parrot_url + "/v1/chat/completions", body)
    want = plain["choices"][0]["logprobs"]["content"]
    assert same_logprobs(reply.response_metadata["logprobs"]["content"], want)
    assert [len(t["top_logprobs"]) for t in want] == [2] * plain["usage"]["completion_tokens"]
    streamed = None
    for chunk in scored.stream("Hello there"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert same_logprobs(streamed.response_metadata["logprobs"]["content"], want)
    assert chat.invoke("Hello there").response_metadata["logprobs"] is None  # as ChatOpenAI's
    # n samples: the generations of one request (seeded, so the server's own answer matches)
    result = chat.generate([[HumanMessage("Hello there")]], n=3, temperature=1, seed=5)
    _, sampled = request("POST", parrot_url + "/v1/chat/completions", {
        "model": chat._model_id({}), "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 10, "n": 3, "temperature": 1, "seed": 5})  # fmt: skip
    assert [g.text for g in result.generations[0]] == [
        c["message"]["content"] for c in sampled["choices"]
    ]
    with pytest.raises(ValueError, match="n=2 cannot stream"):
        list(chat.stream("Hi", n=2))


def same_logprobs(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """The same tokens and alternatives, logprobs to float32's precision (a prompt whose
    prefix was found cached sums in another order)."""
    def tokens(entries: list[dict[str, Any]]) -> list[Any]:
        return [(e["token"], [t["token"] for t in e["top_logprobs"]]) for e in entries]

    def values(entries: list[dict[str, Any]]) -> list[float]:
        return [e["logprob"] for e in entries]

    return bool(want) and tokens(got) == tokens(want) and values(got) == pytest.approx(
        values(want), abs=1e-4
    )


def test_extra_body_reaches_the_server_as_chat_openais_does(
    chat: ChatParrot, parrot_url: str
) -> None:
    """`extra_body` (field, model_kwargs or per call; the call's fields over the field's) adds
    request fields beyond OpenAI's, as ChatOpenAI's does: the server's answer is its own for
    the same body. It was refused before, so top_k, min_p, guided_* could not be sent."""
    model = chat._model_id({})

    def served(**fields: Any) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": "Hello there"}],
                "temperature": 0, "max_tokens": 10, **fields}  # fmt: skip
        status, answer = request("POST", parrot_url + "/v1/chat/completions", body)
        assert status == 200, answer
        return answer["choices"][0]["message"]["content"]

    choosy = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=10,
                        extra_body={"guided_choice": ["alpha", "beta gamma"]})  # fmt: skip
    assert choosy.invoke("Hello there").content == served(guided_choice=["alpha", "beta gamma"])
    digits = chat.invoke("Hello there", extra_body={"guided_regex": "[0-9]{3}"}).content
    assert digits == served(guided_regex="[0-9]{3}") and len(digits) == 3 and digits.isdigit()
    # top_k=1 samples the likeliest token: greedy, whatever the temperature
    top1 = ChatParrot(base_url=parrot_url, temperature=1, seed=3, max_tokens=10,
                      extra_body={"top_k": 1})  # fmt: skip
    assert top1.invoke("Hello there").content == served()
    assert top1.invoke("Hello there", extra_body={"top_k": 50}).content == served(
        temperature=1, seed=3, top_k=50
    )
    with pytest.raises(ParrotError, match="use_beam_search") as refused:  # the server's 400
        chat.invoke("Hello there", extra_body={"use_beam_search": True})
    assert refused.value.request_id.startswith("req_")  # the server's log line names it
    with pytest.raises(ParrotError, match="use_beam_search") as refused:
        list(chat.stream("Hello there", extra_body={"use_beam_search": True}))
    assert refused.value.request_id.startswith("req_")
    # streamed: the same text; stream_usage=False leaves the usage chunk out
    streamed = None
    for chunk in choosy.stream("Hello there", stream_usage=False):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.content == choosy.invoke("Hello there").content
    assert streamed.usage_metadata is None
    quiet = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=4, stream_usage=False)
    assert all(c.usage_metadata is None for c in quiet.stream("Hello there"))
    # compiled: fields a semantic call has keep the call in the graph; others run it here
    compiled = lc.compile(lc_prompt() | choosy)
    assert compiled.invoke({"q": "Hello there"}).content == served(
        guided_choice=["alpha", "beta gamma"]
    )
    assert compiled.split_steps == set() and len(compiled.last_calls) == 1
    urgent = lc.compile(lc_prompt() | chat.bind(extra_body={"priority": -1}))
    assert urgent.invoke({"q": "Hello there"}).content == served(priority=-1)
    assert urgent.last_calls == []  # a plain request (its input holds no generated text)
    # ParrotLLM's semantic calls take the fields they have options for, and refuse others
    llm = ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=10,
                    extra_body={"guided_regex": "[a-z]{4}"})  # fmt: skip
    completion = {"model": model, "prompt": "Animals:", "temperature": 0, "max_tokens": 10,
                  "guided_regex": "[a-z]{4}"}  # fmt: skip
    text = request("POST", parrot_url + "/v1/completions", completion)[1]["choices"][0]["text"]
    assert llm.invoke("Animals:") == text and len(text) == 4
    with pytest.raises(ValueError, match="ParrotLLM cannot honour extra_body's 'priority'"):
        llm.invoke("Animals:", extra_body={"priority": -1})


def test_a_streaming_llm_sends_its_tokens_to_the_callbacks(parrot_url: str) -> None:
    """`ParrotLLM(streaming=True)` (langchain-openai's OpenAI LLM's setting; refused before):
    invoke streams, each token reaching the callbacks, the answer the plain one. A batch of
    several prompts is refused, as langchain-openai's is (one run's callbacks for all)."""
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.seen.append(token)

    plain = ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=10).invoke("Animals:")
    tokens = Tokens()
    llm = ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=10, streaming=True)
    assert llm.invoke("Animals:", config={"callbacks": [tokens]}) == plain
    assert len(tokens.seen) > 1 and "".join(tokens.seen) == plain
    assert asyncio.run(llm.ainvoke("Animals:")) == plain
    with pytest.raises(ValueError, match="cannot stream results with multiple prompts"):
        llm.generate(["Animals:", "Plants:"])


def test_llm_n_samples_are_semantic_calls_as_the_servers_n(parrot_url: str) -> None:
    """`ParrotLLM(n=3)` (langchain-openai's OpenAI LLM's `n`; refused before): each prompt's
    generations are n semantic calls of one graph, sample i seeded seed + i as the server's
    own `n` seeds them, so they equal its /v1/completions answer; the prompt counts once."""
    llm = ParrotLLM(base_url=parrot_url, temperature=1, seed=5, max_tokens=8, n=3)
    result = llm.generate(["Animals:", "Plants:"])
    model = llm._server_info()[0]
    _, plain = request("POST", parrot_url + "/v1/completions", {
        "model": model, "prompt": ["Animals:", "Plants:"], "temperature": 1, "seed": 5,
        "max_tokens": 8, "n": 3})  # fmt: skip
    want = [c["text"] for c in plain["choices"]]
    assert [[g.text for g in gens] for gens in result.generations] == [want[:3], want[3:]]
    assert len(set(want[:3])) > 1  # the samples differ
    assert result.llm_output["token_usage"] == {
        k: plain["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    assert llm.invoke("Animals:") == want[0]
    assert lc.compile(lc_prompt_text() | llm).invoke({"q": "Animals:"}) == want[0]
    with pytest.raises(ValueError, match="cannot stream results when n > 1"):
        list(llm.stream("Animals:"))


def lc_prompt_text() -> Any:
    from langchain_core.prompts import PromptTemplate

    return PromptTemplate.from_template("{q}")


def test_metadata_has_the_keys_that_langchain_openais_classes_report(
    parrot_url: str, served_model: str
) -> None:
    """Against the same server, ChatParrot's messages (invoked, streamed with and without the
    usage chunk) and ParrotLLM's streamed generation carry the metadata keys that ChatOpenAI's
    and OpenAI's do, with the same values where the server decides them. Missing before: the
    response id and system_fingerprint, a streamed message's model without the usage chunk,
    a streamed LLM generation's finish_reason and token usage."""
    from langchain_openai import ChatOpenAI
    from langchain_openai import OpenAI as OpenAILLM

    settings = {"temperature": 0, "max_tokens": 5}
    ours = ChatParrot(base_url=parrot_url, **settings)
    theirs = ChatOpenAI(base_url=parrot_url + "/v1", api_key="none", model=served_model,
                        **settings)  # fmt: skip
    mine, want = ours.invoke("Hello there"), theirs.invoke("Hello there")
    assert set(want.response_metadata) - set(mine.response_metadata) <= {"service_tier"}
    assert mine.response_metadata["id"] == mine.id and mine.id.startswith("chatcmpl")
    for usage in (True, False):
        got, ref = (functools.reduce(operator.add, model.stream("Hello there", stream_usage=usage))
                    for model in (ours, theirs))  # fmt: skip
        for key in ("model_name", "finish_reason", "model_provider"):
            assert (key in got.response_metadata) == (key in ref.response_metadata), (usage, key)
        assert got.response_metadata["model_name"] == ref.response_metadata["model_name"]
        assert (got.usage_metadata is None) == (ref.usage_metadata is None)
    llm = ParrotLLM(base_url=parrot_url, streaming=True, **settings)
    reference = OpenAILLM(base_url=parrot_url + "/v1", api_key="none", model=served_model,
                          streaming=True, **settings)  # fmt: skip
    result, expected = llm.generate(["Animals:"]), reference.generate(["Animals:"])
    assert result.generations[0][0].text == expected.generations[0][0].text
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == expected.generations[0][0].generation_info["finish_reason"]
    plain = ParrotLLM(base_url=parrot_url, **settings).generate(["Animals:"])
    assert result.llm_output == plain.llm_output
