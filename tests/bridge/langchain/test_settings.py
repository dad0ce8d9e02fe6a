"""Model settings, sampling per call, message conversion and prompt templates (no server)."""

from __future__ import annotations

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import ValidationError

from parrot_bridge.langchain import ChatParrot, ParrotLLM
from parrot_bridge.langchain.http import ServerHttp
from parrot_bridge.langchain.llm import prompt_template
from parrot_bridge.langchain.messages import to_chat_messages
from parrot_bridge.template import Text, parse_template


def test_sampling_merges_fields_and_per_call_arguments() -> None:
    llm = ChatParrot(temperature=0, max_tokens=5, stop_sequences=["x"], seed=3)
    assert llm._sampling(None, {}) == {"temperature": 0, "max_tokens": 5, "seed": 3,
                                       "stop": ["x"]}  # fmt: skip
    assert llm._sampling(["y"], {"max_tokens": 9, "temperature": 0.5}) == {
        "temperature": 0.5, "max_tokens": 9, "seed": 3, "stop": ["y"]}  # fmt: skip
    assert ParrotLLM(max_tokens=None)._sampling("z", {}) == {"stop": ["z"]}
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"


def test_bad_settings_are_refused_with_the_field() -> None:
    with pytest.raises(ValidationError, match="stop strings must not be empty"):
        ChatParrot(stop=[""])
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatParrot(max_tokens=0)
    with pytest.raises(ValueError, match="base_url must start with http"):
        ServerHttp("localhost:9000")
    # ChatOpenAI's base_url ends in /v1, which our routes add: it was sent to /v1/v1/...
    for given in ("http://h:9/v1", "http://h:9/v1/", "http://h:9/"):
        assert ChatParrot(base_url=given).base_url == ParrotLLM(base_url=given).base_url
        assert ChatParrot(base_url=given).base_url == ServerHttp(given).base_url == "http://h:9"
    # per call too, with the same bounds (the graph path would otherwise send what the
    # constructor refuses)
    for model in (ChatParrot(), ParrotLLM()):
        for option, value in (("temperature", 5), ("top_p", 0), ("max_tokens", 0),
                              ("presence_penalty", 3), ("seed", "x")):  # fmt: skip
            with pytest.raises(ValueError, match=f"{option}={value!r} is refused"):
                model._sampling(None, {option: value})
        with pytest.raises(ValueError, match="temperature=5 is refused"):
            model.model_copy(update={"model_kwargs": {"temperature": 5}})._sampling(None, {})


def test_messages_become_roles_and_text() -> None:
    messages = [SystemMessage("s"), HumanMessage([{"type": "text", "text": "a"}, "b"]),
                AIMessage("c"), ChatMessage(role="developer", content="d")]  # fmt: skip
    assert to_chat_messages(messages) == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"}, {"role": "developer", "content": "d"},
    ]  # fmt: skip
    calls = AIMessage(
        [{"type": "text", "text": "e"}, {"type": "tool_call", "id": "1", "name": "f", "args": {}}],
        tool_calls=[{"name": "f", "args": {"x": 1}, "id": "1"}],
        invalid_tool_calls=[{"name": "g", "args": "{oops", "id": "2", "error": None}],
    )
    assert to_chat_messages([calls, ToolMessage("42", tool_call_id="1")]) == [
        {"role": "assistant", "content": "e", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "2", "type": "function", "function": {"name": "g", "arguments": "{oops"}},
        ]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"messages\[0\]: FunctionMessage is not supported"):
        to_chat_messages([FunctionMessage("42", name="f")])



def test_an_assistants_tool_use_and_reasoning_blocks_are_left_out() -> None:
    """Anthropic-style `tool_use` blocks (LangChain's standard tool tests send them) are
    carried by the message's tool_calls, and reasoning is not sent back: ChatOpenAI drops both
    from the text, and so does ChatParrot (it refused the whole history)."""
    call = {"name": "f", "args": {"x": 1}, "id": "1"}
    blocks = [{"type": "thinking", "thinking": "hm"}, {"type": "reasoning", "reasoning": "r"},
              {"type": "reasoning_content", "reasoning_content": {"text": "r"}},
              {"type": "text", "text": "e"},
              {"type": "tool_use", "id": "1", "name": "f", "input": {"x": 1}}]  # fmt: skip
    assert to_chat_messages([AIMessage(blocks, tool_calls=[call])]) == [
        {"role": "assistant", "content": "e", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        ]},
    ]  # fmt: skip

def test_a_prompt_is_constant_text_whatever_it_holds() -> None:
    prompt = "Use {{input:x}} and {{{{ here: {{output:y}}"
    template = parse_template(prompt_template(prompt))
    assert template.segments[0] == Text(prompt, 0) and template.inputs == []


def test_openai_options_are_sent_or_refused() -> None:
    llm = ChatParrot(frequency_penalty=1.5, model_kwargs={"presence_penalty": 0.5},
                     max_completion_tokens=7)  # fmt: skip
    assert llm._sampling(None, {}) == {"max_tokens": 7, "frequency_penalty": 1.5,
                                       "presence_penalty": 0.5}  # fmt: skip
    assert llm._sampling(None, {"frequency_penalty": -1, "max_completion_tokens": 3}) == {
        "max_tokens": 3, "frequency_penalty": -1, "presence_penalty": 0.5}  # fmt: skip
    assert llm._sampling(None, {"logit_bias": {"5": 10}})["logit_bias"] == {"5": 10}
    # a chat request takes n and logprobs, as fields and options; semantic calls take neither
    chat = ChatParrot(n=2, logprobs=True, top_logprobs=3)
    assert chat._sampling(None, {}) == {"n": 2, "logprobs": True, "top_logprobs": 3}
    assert chat._sampling(None, {"n": 1})["n"] == 1
    with pytest.raises(ValidationError, match="top_logprobs"):
        ChatParrot(top_logprobs=21)
    with pytest.raises(ValueError, match="n=0 is refused"):
        chat._sampling(None, {"n": 0})
    with pytest.raises(ValueError, match="n=2 cannot stream"):
        chat._body([HumanMessage("hi")], None, {}, "m", stream=True)
    with pytest.raises(ValidationError, match="n\\b"):
        ParrotLLM(n=0)
    with pytest.raises(ValidationError, match="ParrotLLM cannot honour 'logprobs'"):
        ParrotLLM(model_kwargs={"logprobs": True})
    # ParrotLLM's n: that many semantic calls per prompt; each call's own sampling has none
    sampled = ParrotLLM(n=3, max_tokens=4, seed=7)
    assert sampled._samples({}) == 3 and sampled._samples({"n": 2}) == 2
    assert "n" not in sampled._call_sampling(None, {})
    with pytest.raises(ValueError, match="n=200 is refused"):
        sampled._samples({"n": 200})
    with pytest.raises(ValueError, match="ChatParrot cannot honour 'best_of'"):
        ChatParrot()._sampling(None, {"best_of": 2})
    with pytest.raises(ValidationError, match="not both"):
        ChatParrot(max_tokens=3, max_completion_tokens=4)
    # semantic calls take the penalties too
    assert ParrotLLM(presence_penalty=1, max_tokens=3)._call_sampling(None, {}) == {
        "max_tokens": 3, "presence_penalty": 1}  # fmt: skip


def test_extra_body_is_merged_over_the_request_and_checked_where_given() -> None:
    chat = ChatParrot(extra_body={"top_k": 5, "priority": -1},
                      model_kwargs={"extra_body": {"top_k": 6}})  # fmt: skip
    body = chat._body([HumanMessage("hi")], None, {"extra_body": {"min_p": 0.1}}, "m", False)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "top_k": 6, "priority": -1, "min_p": 0.1}  # fmt: skip
    # over the request's own fields, as OpenAI's client merges it
    assert chat._body([HumanMessage("hi")], None, {"extra_body": {"temperature": 0.3}}, "m",
                      False)["temperature"] == 0.3  # fmt: skip
    assert chat._identifying_params["extra_body"] == {"top_k": 6, "priority": -1}
    assert "extra_body" not in ChatParrot()._identifying_params
    for bad, reason in (({"messages": []}, "must not set 'messages'"),
                        ({"x": float("nan")}, "JSON values"),
                        ({"x": {1, 2}}, "JSON values")):  # fmt: skip
        with pytest.raises(ValidationError, match=reason):
            ChatParrot(extra_body=bad)
        with pytest.raises(ValueError, match=reason):
            chat._body([HumanMessage("hi")], None, {"extra_body": bad}, "m", False)
    with pytest.raises(ValueError, match="extra_body must map field names"):
        chat._extra_body({"extra_body": "top_k=5"})
    with pytest.raises(ValueError, match="fields beyond OpenAI's .* go in extra_body"):
        chat._sampling(None, {"top_k": 5})


def test_semantic_calls_take_the_extra_body_fields_they_have_options_for() -> None:
    llm = ParrotLLM(max_tokens=3, extra_body={"top_k": 4, "guided_json": '{"type": "object"}'})
    assert llm._call_sampling(None, {"extra_body": {"min_p": 0.2, "ignore_eos": True}}) == {
        "max_tokens": 3, "top_k": 4, "json_schema": {"type": "object"}, "min_p": 0.2,
        "ignore_eos": True}  # fmt: skip
    assert llm._call_sampling(None, {"extra_body": {"guided_choice": ["a", "b"],
                                                    "repetition_penalty": 1.2,
                                                    "guided_grammar": 'root ::= "x"',
                                                    "guided_regex": "y"}}) == {
        "max_tokens": 3, "top_k": 4, "json_schema": {"type": "object"}, "choices": ["a", "b"],
        "repetition_penalty": 1.2, "grammar": 'root ::= "x"', "regex": "y"}  # fmt: skip
    with pytest.raises(ValidationError, match="ParrotLLM cannot honour extra_body's 'priority'"):
        ParrotLLM(extra_body={"priority": -1})
    with pytest.raises(ValueError, match="cannot honour extra_body's 'cache_salt'"):
        llm._call_sampling(None, {"extra_body": {"cache_salt": "x"}})
    with pytest.raises(ValueError, match="guided_json is not JSON"):
        llm._call_sampling(None, {"extra_body": {"guided_json": "{nope"}})


def test_stream_usage_asks_for_the_usage_chunk_or_not() -> None:
    def options(model: ChatParrot, **kwargs: object) -> object:
        return model._body([HumanMessage("hi")], None, kwargs, "m", True).get("stream_options")

    assert options(ChatParrot()) == {"include_usage": True}
    assert options(ChatParrot(stream_usage=False)) is None
    assert options(ChatParrot(stream_usage=False), stream_usage=True) == {"include_usage": True}
    assert options(ChatParrot(model_kwargs={"stream_usage": False})) is None
    with pytest.raises(ValidationError, match="stream_usage='yes' is refused"):
        ChatParrot(model_kwargs={"stream_usage": "yes"})
    with pytest.raises(ValueError, match="ParrotLLM cannot honour 'stream_usage'"):
        ParrotLLM()._sampling(None, {"stream_usage": True})


def test_llm_generates_256_tokens_by_default_as_langchain_openais_completion_model() -> None:
    """ParrotLLM stands in for langchain-openai's `OpenAI`, whose max_tokens defaults to 256;
    ChatParrot for ChatOpenAI, whose default is None (up to the context's end). Either may
    be given as None, or as OpenAI's newer name, max_completion_tokens."""
    from langchain_openai import ChatOpenAI, OpenAI

    assert ParrotLLM().max_tokens == OpenAI.model_fields["max_tokens"].default == 256
    assert ChatParrot().max_tokens is ChatOpenAI.model_fields["max_tokens"].default is None
    # what both of ParrotLLM's paths send (plain calls and compiled chains' calls)
    assert ParrotLLM()._call_sampling(None, {}) == {"max_tokens": 256}
    assert ParrotLLM()._get_ls_params()["ls_max_tokens"] == 256
    assert "max_tokens" not in ChatParrot()._sampling(None, {})
    assert "max_tokens" not in ParrotLLM(max_tokens=None)._sampling(None, {})
    assert ParrotLLM(max_tokens=-1).max_tokens is None  # langchain-openai's "as many as possible"
    with pytest.raises(ValidationError):
        ParrotLLM(max_tokens=-2)
    assert ParrotLLM(max_completion_tokens=7)._sampling(None, {}) == {"max_tokens": 7}
    assert ParrotLLM()._sampling(None, {"max_completion_tokens": 9}) == {"max_tokens": 9}
    assert ParrotLLM(model_kwargs={"max_tokens": 5})._sampling(None, {}) == {"max_tokens": 5}
    with pytest.raises(ValidationError, match="not both"):
        ParrotLLM(max_tokens=3, max_completion_tokens=4)
