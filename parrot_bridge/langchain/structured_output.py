"""`ChatParrot.with_structured_output`: a model call whose reply is parsed into a schema's
object, by ChatOpenAI's three methods (a JSON-schema response_format, JSON mode, a forced tool
call), each served by the server's constrained decoding."""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, get_args

from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from parrot_bridge.langchain.response_format import json_schema_format

if TYPE_CHECKING:
    from parrot_bridge.langchain.chat_model import ChatParrot

Method = Literal["function_calling", "json_mode", "json_schema"]
METHODS: tuple[Method, ...] = get_args(Method)


def structured_output(
    model: ChatParrot, schema: dict[str, Any] | type | None, method: Method,
    include_raw: bool, strict: bool | None, options: dict[str, Any],
) -> Runnable:  # fmt: skip
    """`model` bound to answer in `schema`'s shape, then its reply parsed (see
    `ChatParrot.with_structured_output`)."""
    if method not in METHODS:
        raise ValueError(f"with_structured_output: method must be one of {METHODS}, got {method!r}")
    if schema is None and method != "json_mode":
        raise ValueError(f"with_structured_output: method {method!r} needs a schema")
    if strict is not None and method == "json_mode":
        raise ValueError("with_structured_output: strict does not go with method 'json_mode'")
    if "tools" in options:
        raise ValueError(
            "with_structured_output: tools are not offered beside a structured answer (the "
            "server constrains a reply to one or the other); bind_tools them on another model"
        )
    note = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    parser: Runnable
    model._sampling(None, options)  # an option the server cannot honour fails here
    if method == "function_calling":
        assert schema is not None
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = model.bind_tools(
            [schema], tool_choice=name, parallel_tool_calls=False, strict=strict,
            ls_structured_output_format=note, **options,
        )  # fmt: skip
        parser = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            if pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    else:
        if method == "json_mode":
            fmt: dict[str, Any] = {"type": "json_object"}
        else:
            assert schema is not None
            fmt = json_schema_format(schema, strict)
        bound = model.bind(response_format=fmt, ls_structured_output_format=note, **options)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()  # type: ignore[arg-type]
    if not include_raw:
        return bound | parser
    # {"raw", "parsed", "parsing_error"}: a reply that does not parse gives parsed=None and the
    # exception, rather than raising
    parsed = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks(
        [unparsed], exception_key="parsing_error"
    )
