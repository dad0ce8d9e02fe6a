"""Parrot's settings and request bodies (no server): additional_kwargs and per-call fields as
LlamaIndex's OpenAI LLM takes them, and unknown settings refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parrot_bridge.llamaindex import Parrot, UnmarkablePromptError

URL = "http://127.0.0.1:1"
CARD = {"id": "m"}


def test_an_unknown_setting_is_refused_not_dropped() -> None:
    Parrot(base_url=URL, api_key="unused")  # as OpenAI-style code passes it
    for setting in ({"top_p": 0.3}, {"api_base": URL}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            Parrot(base_url=URL, **setting)
    for bad, reason in (({"prompt": "x"}, "must not set 'prompt'"),
                        ({"x": float("inf")}, "JSON values")):  # fmt: skip
        with pytest.raises(ValidationError, match=reason):
            Parrot(base_url=URL, additional_kwargs=bad)


def test_additional_kwargs_go_with_every_plain_request_per_call_fields_over_them() -> None:
    llm = Parrot(base_url=URL, max_tokens=5, additional_kwargs={"top_p": 0.5, "top_k": 3})
    assert llm._body(CARD, "hi", {"seed": 3, "top_k": None}) == {
        "model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0.0, "top_p": 0.5,
        "top_k": 3, "seed": 3}  # fmt: skip
    body = llm._body(CARD, "hi", {"top_p": 0.9, "extra_body": {"min_p": 0.1, "top_k": 7}})
    assert (body["top_p"], body["top_k"], body["min_p"]) == (0.9, 7, 0.1)
    chat = llm._chat_body(CARD, [], {"tools": [{"type": "function"}], "tool_choice": "auto"})
    assert chat["tools"] == [{"type": "function"}] and chat["tool_choice"] == "auto"
    with pytest.raises(ValueError, match="Parrot cannot send 'tools'"):
        llm._body(CARD, "hi", {"tools": []})  # completions take no tools
    with pytest.raises(ValueError, match="Parrot cannot send 'bogus'.*go in extra_body"):
        llm._chat_body(CARD, [], {"bogus": 1})
    with pytest.raises(ValueError, match="extra_body must not set 'stream'"):
        llm._body(CARD, "hi", {"extra_body": {"stream": True}})


def test_semantic_calls_take_the_fields_they_have_options_for() -> None:
    llm = Parrot(base_url=URL, max_tokens=5, temperature=1.0, additional_kwargs={
        "temperature": 0.5, "stop": "END", "guided_json": '{"type": "object"}', "top_k": 2})
    assert llm._semantic_sampling() == {"max_tokens": 5, "temperature": 0.5, "stop": ["END"],
                                        "json_schema": {"type": "object"}, "top_k": 2}
    plain = Parrot(base_url=URL, additional_kwargs={"priority": -1, "top_p": 0.5})
    with pytest.raises(UnmarkablePromptError, match="'priority'"):  # predict goes the plain way
        plain._semantic_sampling()
    # logprobs change no text, and predict reads only the text: its calls stay semantic
    scored = Parrot(base_url=URL, max_tokens=5, logprobs=True, top_logprobs=2,
                    additional_kwargs={"top_logprobs": 3})  # fmt: skip
    assert scored._semantic_sampling() == {"max_tokens": 5, "temperature": 0.0}
    # as LlamaIndex's OpenAI LLM sends them: a count for completions, a flag and a count for chat
    assert scored._body(CARD, "hi", {})["logprobs"] == 2
    chat = scored._chat_body(CARD, [], {})
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 3)  # additional_kwargs over fields
    with pytest.raises(ValidationError, match="top_logprobs"):
        Parrot(base_url=URL, top_logprobs=21)


def test_stream_options_go_with_streamed_requests_only() -> None:
    """`stream_options` ({"include_usage": True}: the server's token counts in a stream's last
    chunk), in `additional_kwargs` or per call, as LlamaIndex's OpenAI LLM takes it. It was
    refused, saying to give it as an argument that Parrot does not have."""
    usage = {"include_usage": True}
    llm = Parrot(base_url=URL, max_tokens=5, additional_kwargs={"stream_options": usage})
    assert llm._body(CARD, "hi", {}, stream=True)["stream_options"] == usage
    assert llm._chat_body(CARD, [], {}, stream=True)["stream_options"] == usage
    # the server refuses it in a request that does not stream; predict gets usage anyway
    assert "stream_options" not in llm._body(CARD, "hi", {})
    assert "stream_options" not in llm._chat_body(CARD, [], {})
    assert llm._semantic_sampling() == {"max_tokens": 5, "temperature": 0.0}
    plain = Parrot(base_url=URL)
    assert plain._body(CARD, "hi", {"stream_options": usage}, stream=True)["stream_options"] == (
        usage
    )
    assert "stream_options" not in plain._body(CARD, "hi", {"stream_options": usage})
    with pytest.raises(ValidationError, match="stream_options must map field names"):
        Parrot(base_url=URL, additional_kwargs={"stream_options": True})


def test_settings_round_trip_through_llamaindexs_serialization() -> None:
    """to_dict/from_dict (LlamaIndex's; its class_name key included) give the same settings,
    unknown settings being refused."""
    llm = Parrot(base_url=URL, max_tokens=7, logprobs=True, additional_kwargs={"top_k": 2})
    again = Parrot.from_dict(llm.to_dict())
    assert (again.max_tokens, again.logprobs, again.additional_kwargs) == (7, True, {"top_k": 2})
    assert Parrot.from_json(llm.to_json()).base_url == URL

