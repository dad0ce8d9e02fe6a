"""OpenAI's `response_format` option of ChatParrot and ParrotLLM: checked, and as semantic calls
take it (their `json_schema` constraint)."""

from __future__ import annotations

from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_function
from langchain_core.utils.pydantic import is_basemodel_subclass

# JSON mode's constraint as a semantic call takes it: a bare object schema is any object
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def checked_response_format(owner: str, value: Any) -> dict[str, Any] | None:
    """`value` in OpenAI's request shape, or None for plain text. Takes what ChatOpenAI takes:
    {"type": "text" | "json_object"}, {"type": "json_schema", "json_schema": {"name",
    "schema", "strict"?}}, or a pydantic model class (its schema, named after it). Anything
    else raises ValueError saying what was wrong."""
    if isinstance(value, type) and is_basemodel_subclass(value):
        return json_schema_format(value)
    if not isinstance(value, dict):
        raise ValueError(
            f"{owner}: response_format must be a dict such as {{'type': 'json_object'}} or a "
            f"pydantic model class, got {type(value).__name__}"
        )
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise ValueError(
            f"{owner}: response_format type {kind!r} is not supported; the types are text, "
            "json_object and json_schema"
        )
    spec = value.get("json_schema")
    if not (isinstance(spec, dict) and isinstance(spec.get("schema"), dict)):
        raise ValueError(
            f"{owner}: a json_schema response_format needs "
            "{'json_schema': {'name': ..., 'schema': {...}}}"
        )
    return value


def json_schema_format(schema: dict[str, Any] | type, strict: bool | None = None) -> dict[str, Any]:
    """The json_schema response_format of a schema as `with_structured_output` takes it (a
    pydantic or TypedDict class, a JSON schema, an OpenAI function, or a response_format's
    `json_schema` part)."""
    if isinstance(schema, dict) and schema.get("type") == "json_schema":
        return checked_response_format("with_structured_output", schema)  # type: ignore[return-value]
    if isinstance(schema, dict) and isinstance(schema.get("schema"), dict) and "name" in schema:
        spec = dict(schema)
    else:
        function = convert_to_openai_function(schema, strict=strict)
        spec = {"name": function["name"], "schema": function.get("parameters", ANY_OBJECT)}
        if "description" in function:
            spec["description"] = function["description"]
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def semantic_constraint(sampling: dict[str, Any]) -> dict[str, Any]:
    """`sampling` (a model's request options) with its response_format as a semantic call's
    `json_schema` constraint, which follows the same schema with the same automaton."""
    if "response_format" not in sampling:
        return sampling
    sampling = dict(sampling)
    fmt = sampling.pop("response_format")
    if fmt["type"] == "json_object":
        sampling["json_schema"] = ANY_OBJECT
    else:
        sampling["json_schema"] = fmt["json_schema"]["schema"]
    return sampling
