"""Whether a JSON Schema is valid, as its meta-schema has it: each keyword's value of the JSON
type the keyword takes (`type` naming JSON types, `properties` an object of schemas, `required`
a list of names, `minLength` a count, ...), subschemas checked alike, unknown keywords allowed.

This is looser than `server.engine.json_schema`, which refuses valid schemas that the decoder
cannot enforce (multipleOf, uniqueItems, alternatives that start alike): a tool's parameters
need only be valid (they are shown to the model), enforced only where a call is forced and
the decoder can. Keywords of drafts 4 to 2020-12 are known, in any of their forms (`items` as
a list, `exclusiveMinimum` as a flag), as tool schemas written for any of them are common.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from server.engine.json_depth import path_deeper_than, shown_path

# JSON levels; more than any real tool's parameters, few enough for the recursion below
MAX_DEPTH = 128
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

_SCHEMA = frozenset({
    "additionalProperties", "additionalItems", "contains", "propertyNames", "if", "then",
    "else", "not", "unevaluatedItems", "unevaluatedProperties", "contentSchema",
})  # fmt: skip
_SCHEMA_MAPS = frozenset({
    "properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
})  # fmt: skip
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_COUNTS = frozenset({
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "minContains", "maxContains",
})  # fmt: skip
_NUMBERS = frozenset({"minimum", "maximum"})
_STRINGS = frozenset({
    "$ref", "$id", "$schema", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef",
    "$comment", "title", "description", "format", "pattern", "contentMediaType",
    "contentEncoding",
})  # fmt: skip
_FLAGS = frozenset({"uniqueItems", "readOnly", "writeOnly", "deprecated", "$recursiveAnchor"})


def schema_problem(schema: object) -> str | None:
    """What makes `schema` an invalid JSON Schema, as "#/path: what" (the first found), or
    None when it is valid."""
    deep = path_deeper_than(schema, MAX_DEPTH)
    if deep is not None:
        return f"#/{shown_path(deep, '/')}: the schema nests more than {MAX_DEPTH} levels deep"
    return _problem(schema, "#")


def _problem(schema: object, where: str) -> str | None:
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{where}: a schema must be an object or a boolean, got {_shown(schema)}"
    for key, value in schema.items():
        found = _keyword_problem(key, value, f"{where}/{key}")
        if found is not None:
            return found
    return None


def _keyword_problem(key: str, value: Any, where: str) -> str | None:
    """The problem of one keyword's value (None: none, or a keyword that is not checked)."""
    if key == "type":
        names = value if isinstance(value, list) else [value]
        bad = [n for n in names if n not in TYPES]
        if bad or not names or len(set(map(str, names))) != len(names):
            return f"{where}: must be one of {', '.join(TYPES)} or a list of them without " \
                f"repeats, got {_shown(value)}"  # fmt: skip
        return None
    if key in _SCHEMA:
        return _problem(value, where)
    if key == "items":  # a schema, or (drafts 4 to 2019-09) a list of them
        if isinstance(value, list):
            return _first(_problem(v, f"{where}/{i}") for i, v in enumerate(value))
        return _problem(value, where)
    if key in _SCHEMA_MAPS or key == "dependencies":
        if not isinstance(value, dict):
            return f"{where}: must be an object of schemas, got {_shown(value)}"
        if key == "dependencies":  # each a schema or a list of property names
            return _first(
                _names_problem(v, f"{where}/{k}") if isinstance(v, list)
                else _problem(v, f"{where}/{k}")
                for k, v in value.items()
            )  # fmt: skip
        return _first(_problem(v, f"{where}/{k}") for k, v in value.items())
    if key in _SCHEMA_LISTS:
        if not isinstance(value, list) or not value:
            return f"{where}: must be a non-empty list of schemas, got {_shown(value)}"
        return _first(_problem(v, f"{where}/{i}") for i, v in enumerate(value))
    if key in ("required", "dependentRequired"):
        if key == "dependentRequired":
            if not isinstance(value, dict):
                return f"{where}: must be an object of lists of property names"
            return _first(_names_problem(v, f"{where}/{k}") for k, v in value.items())
        # draft 3 put `required: true` on a property; it is still seen, and means nothing now
        return None if isinstance(value, bool) else _names_problem(value, where)
    if key in _COUNTS:
        return None if _count(value) else \
            f"{where}: must be an integer >= 0, got {_shown(value)}"  # fmt: skip
    if key == "multipleOf":
        return None if _number(value) and value > 0 else \
            f"{where}: must be a number > 0, got {_shown(value)}"  # fmt: skip
    if key in _NUMBERS or key in ("exclusiveMinimum", "exclusiveMaximum"):
        # draft 4's exclusiveMinimum/exclusiveMaximum are flags on minimum/maximum
        if _number(value) or (key.startswith("exclusive") and isinstance(value, bool)):
            return None
        return f"{where}: must be a number, got {_shown(value)}"
    if key in _STRINGS:
        return None if isinstance(value, str) else \
            f"{where}: must be a string, got {_shown(value)}"  # fmt: skip
    if key in _FLAGS:
        return None if isinstance(value, bool) else \
            f"{where}: must be true or false, got {_shown(value)}"  # fmt: skip
    if key in ("enum", "examples"):
        return None if isinstance(value, list) else \
            f"{where}: must be a list, got {_shown(value)}"  # fmt: skip
    return None  # const, default and unknown keywords: any value


def _names_problem(value: object, where: str) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"{where}: must be a list of property names, got {_shown(value)}"
    if len(set(value)) != len(value):
        return f"{where}: names a property twice"
    return None


def _first(problems: Any) -> str | None:
    return next((p for p in problems if p is not None), None)


def _number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def _count(value: object) -> bool:
    """An integer >= 0; JSON's 2.0 is one too, as the meta-schema counts it."""
    if isinstance(value, float):  # float(): an int of 400 digits overflows it
        return math.isfinite(value) and value.is_integer() and value >= 0
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: object) -> str:
    return reprlib.repr(value)  # a long list or string shortened
