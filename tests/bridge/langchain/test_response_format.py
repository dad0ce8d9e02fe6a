"""ChatParrot's `response_format` and `with_structured_output` as they are bound and checked
(no server: what is sent is read off the bound runnables)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import RunnableBinding, RunnableSequence
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

from parrot_bridge.langchain import ChatParrot, ParrotLLM
from parrot_bridge.langchain.response_format import (
    checked_response_format,
    json_schema_format,
    semantic_constraint,
)

NOTE = {"name": "note", "schema": {"type": "object", "properties": {"text": {"type": "string"}}}}


class Joke(BaseModel):
    """A joke."""

    setup: str
    punchline: str


class JokeDict(TypedDict):
    setup: str


def bound_options(runnable: Any) -> dict[str, Any]:
    """The call options the model step of a structured-output runnable is bound with."""
    assert isinstance(runnable, RunnableSequence)
    first = runnable.first
    assert isinstance(first, RunnableBinding)
    return dict(first.kwargs)


def test_response_formats_are_checked_into_openais_shape() -> None:
    assert checked_response_format("M", {"type": "text"}) is None
    assert checked_response_format("M", {"type": "json_object"}) == {"type": "json_object"}
    given = {"type": "json_schema", "json_schema": NOTE}
    assert checked_response_format("M", given) == given
    # a pydantic class is taken as ChatOpenAI takes it: its schema, named after it
    made = checked_response_format("M", Joke)
    assert made is not None and made["type"] == "json_schema"
    assert made["json_schema"]["name"] == "Joke"
    assert list(made["json_schema"]["schema"]["properties"]) == ["setup", "punchline"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "xml"}, "response_format type 'xml' is not supported; the types are text"),
        ({"type": "json_schema"}, "a json_schema response_format needs"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "needs"),
        ("json", "must be a dict such as"),
    ],
)
def test_a_bad_response_format_is_refused_saying_why(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checked_response_format("ChatParrot", value)
    # at construction (model_kwargs) and per call, on both models
    with pytest.raises(ValidationError, match=message):
        ChatParrot(model_kwargs={"response_format": value})
    with pytest.raises(ValueError, match=message):
        ParrotLLM()._sampling(None, {"response_format": value})


def test_the_response_format_goes_into_the_request_options() -> None:
    chat = ChatParrot(model_kwargs={"response_format": Joke})
    sent = chat._sampling(None, {})["response_format"]
    assert sent == json_schema_format(Joke)
    per_call = chat._sampling(None, {"response_format": {"type": "text"}})
    assert "response_format" not in per_call  # text is the default: nothing is sent


def test_semantic_calls_take_the_response_format_as_their_schema() -> None:
    assert semantic_constraint({"max_tokens": 3}) == {"max_tokens": 3}
    schema = semantic_constraint({"response_format": {"type": "json_schema", "json_schema": NOTE}})
    assert schema == {"json_schema": NOTE["schema"]}
    assert semantic_constraint({"response_format": {"type": "json_object"}}) == {
        "json_schema": {"type": "object"}  # a bare object schema: any object, as JSON mode
    }


def test_json_schema_formats_of_each_kind_of_schema() -> None:
    assert json_schema_format(NOTE) == {"type": "json_schema", "json_schema": NOTE}
    typed = json_schema_format(JokeDict, strict=True)["json_schema"]
    assert typed["name"] == "JokeDict" and typed["strict"] is True
    assert typed["schema"]["properties"] == {"setup": {"type": "string"}}
    plain = json_schema_format({"title": "t", "type": "object", "properties": {}})
    assert plain["json_schema"]["name"] == "t"


def test_with_structured_output_binds_each_method_as_chat_openai_does() -> None:
    chat = ChatParrot()
    by_schema = chat.with_structured_output(Joke)  # json_schema is the default, as ChatOpenAI's
    options = bound_options(by_schema)
    assert options["response_format"] == json_schema_format(Joke)
    assert options["ls_structured_output_format"]["kwargs"]["method"] == "json_schema"
    assert isinstance(by_schema.last, PydanticOutputParser)  # type: ignore[attr-defined]
    json_mode = chat.with_structured_output(None, method="json_mode", max_tokens=9)
    assert bound_options(json_mode)["response_format"] == {"type": "json_object"}
    assert bound_options(json_mode)["max_tokens"] == 9
    assert isinstance(json_mode.last, JsonOutputParser)  # type: ignore[attr-defined]
    forced = chat.with_structured_output(Joke, method="function_calling")
    options = bound_options(forced)
    assert [t["function"]["name"] for t in options["tools"]] == ["Joke"]
    assert options["tool_choice"] == {"type": "function", "function": {"name": "Joke"}}
    assert options["parallel_tool_calls"] is False
    assert isinstance(forced.last, PydanticToolsParser)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("schema", "kwargs", "message"),
    [
        (Joke, {"method": "xml"}, "method must be one of"),
        (None, {}, "method 'json_schema' needs a schema"),
        (None, {"method": "function_calling"}, "needs a schema"),
        (Joke, {"method": "json_mode", "strict": True}, "strict does not go with"),
        (Joke, {"tools": [NOTE]}, "tools are not offered beside a structured answer"),
        (Joke, {"best_of": 2}, "cannot honour 'best_of'"),
        (Joke, {"method": "function_calling", "temperature": 5}, "temperature=5 is refused"),
    ],
)
def test_with_structured_output_refuses_what_it_cannot_do_when_defined(
    schema: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ChatParrot().with_structured_output(schema, **kwargs)
