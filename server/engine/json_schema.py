"""A JSON Schema, compiled into the nodes that `SchemaPrefix` follows (structured outputs).

The subset that decides text byte by byte: `type` (one or a list), `properties` with
`required` and `additionalProperties` (absent means none, as OpenAI's strict mode has it),
`items` with `minItems`/`maxItems`, strings' `minLength`, `maxLength` and `pattern`
(`string_rules.py`), numbers' `minimum`, `maximum`, `exclusiveMinimum` and `exclusiveMaximum`
(`number_bounds.py`; such numbers are written without an exponent), `enum` and `const` (a value
is written as its compact JSON, non-ASCII characters as themselves; only the values that the
keywords beside them allow), `anyOf`/`oneOf` whose
branches start with different characters (an object or null, say: pydantic's optional fields),
a one-branch `allOf`, and `$ref` into `$defs`/`definitions` (recursion too). A string's
`format` is enforced where `string_formats.py` has it (OpenAI's: date-time, date, time,
duration, email, hostname, ipv4, ipv6, uuid), else an annotation. Annotations are ignored; any other assertion (multipleOf, uniqueItems, ...) is refused with `SchemaError`
naming where it is, rather than silently not enforced.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from server.engine.json_depth import path_deeper_than, shown_path
from server.engine.number_bounds import NumberBounds
from server.engine.regex_prefix import RegexError
from server.engine.string_formats import FORMAT_PATTERNS
from server.engine.string_rules import StringRules, search_regex

# JSON levels (an object property takes two: `properties` and its name), a few times OpenAI's
# ten levels of objects; the compiler recurses per level and met Python's recursion limit
# (a 500) near 330
MAX_SCHEMA_DEPTH = 64
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "format",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict", "name",
})  # fmt: skip
_KINDS = ("object", "array", "string", "number", "integer", "boolean", "null")
_FIRST_BYTES = {
    "object": frozenset(b"{"), "array": frozenset(b"["), "string": frozenset(b'"'),
    "number": frozenset(b"-0123456789"), "integer": frozenset(b"-0123456789"),
    "boolean": frozenset(b"tf"), "null": frozenset(b"n"),
}  # fmt: skip


_CACHED_SCHEMAS = 64
_CACHE: OrderedDict[str, Node] = OrderedDict()
_CACHE_LOCK = threading.Lock()


class SchemaError(ValueError):
    """A schema this decoder cannot follow (the message names the place and the keyword)."""


@dataclass(eq=False)
class Node:
    """What a JSON value may be. `kind` is one of _KINDS, "enum" (`values`: the allowed values
    as compact JSON bytes), "union" (`options`, told apart by their first byte) or "any"."""

    kind: str
    properties: dict[str, Node] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    additional: Node | None = None  # the schema of keys beyond `properties`; None: none allowed
    items: Node | None = None
    min_items: int = 0
    max_items: int | None = None
    values: tuple[bytes, ...] = ()
    options: tuple[Node, ...] = ()
    string: StringRules | None = None  # a string's lengths and pattern, if it has any
    bounds: NumberBounds | None = None  # a number's range, if it has one

    def first_bytes(self) -> frozenset[int]:
        if self.kind == "enum":
            return frozenset(v[0] for v in self.values)
        if self.kind == "union":
            return frozenset().union(*(o.first_bytes() for o in self.options))
        if self.kind == "any":
            return frozenset().union(*_FIRST_BYTES.values())
        return _FIRST_BYTES[self.kind]

    def option_for(self, b: int) -> Node | None:
        """The branch of a union that a value starting with byte `b` takes."""
        return next((o for o in self.options if b in o.first_bytes()), None)


ANY = Node("any")


def compile_schema(schema: object) -> Node:
    """The root node of `schema`, which must describe an object; SchemaError otherwise.
    A request's schema is compiled where it is checked and again where its sampling is built
    (a 100,000-value enum takes ~0.25 s here), so the nodes of recent schemas are kept, by
    their JSON text (properties in their order, which the output follows); they are never
    changed once built."""
    if not isinstance(schema, dict):
        raise SchemaError("the schema must be a JSON object")
    try:
        key = json.dumps(schema)
    except (TypeError, ValueError, RecursionError):  # not JSON: the compiler says where
        return _compiled(schema)
    with _CACHE_LOCK:  # compiled in a worker thread and on the event loop (constraint_compile)
        node = _CACHE.get(key)
        if node is not None:
            _CACHE.move_to_end(key)
            return node
    node = _compiled(schema)
    with _CACHE_LOCK:
        _CACHE[key] = node
        while len(_CACHE) > _CACHED_SCHEMAS:
            _CACHE.popitem(last=False)
    return node


def _compiled(schema: dict[str, Any]) -> Node:
    deep = path_deeper_than(schema, MAX_SCHEMA_DEPTH)
    if deep is not None:
        raise SchemaError(
            f"the schema nests more than {MAX_SCHEMA_DEPTH} levels deep "
            f"(at #/{shown_path(deep, '/')})"
        )
    root = _Compiler(schema).node(schema, "#")
    if root.kind != "object":
        raise SchemaError("the schema's root must be an object (type: object)")
    return root


class _Compiler:
    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root
        self._refs: dict[str, Node] = {}

    def node(self, schema: object, where: str) -> Node:
        if schema is True or schema == {}:
            return ANY
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema must be an object or true, got {schema!r}")
        if "$ref" in schema:
            return self._ref(schema, where)
        unknown = sorted(set(schema) - _ANNOTATIONS - {
            "type", "properties", "required", "additionalProperties", "items", "minItems",
            "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", *_STRING_KEYS, *_NUMBER_KEYS,
        })  # fmt: skip
        if unknown:
            # a key that reads as nothing (blank, control characters) is shown quoted
            names = ", ".join(k if k.strip() and k.isprintable() else repr(k) for k in unknown)
            raise SchemaError(f"{where}: {names} cannot be enforced while decoding")
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{where}: enum must be a non-empty list")
            encoded = tuple(_compact(v, where) for v in values)
            return Node("enum", values=self._allowed_values(schema, encoded, where))
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                return self._branches(schema, key, where)
        kinds = schema.get("type", list(_KINDS))
        kinds = [kinds] if isinstance(kinds, str) else kinds
        # a type of another JSON type (1.5, {}) is refused here, not met by the code below
        if not isinstance(kinds, list) or not kinds or any(
            not isinstance(k, str) or k not in _KINDS for k in kinds
        ):
            raise SchemaError(f"{where}: type must name {', '.join(_KINDS)}, got {kinds!r}")
        nodes = [self._typed(schema, k, where) for k in dict.fromkeys(kinds)]
        if "number" in kinds and "integer" in kinds:
            nodes = [n for n in nodes if n.kind != "integer"]
        return nodes[0] if len(nodes) == 1 else _union(nodes, where)

    def _typed(self, schema: dict[str, Any], kind: str, where: str) -> Node:
        if kind == "object":
            properties = schema.get("properties", {})
            if not isinstance(properties, dict):
                raise SchemaError(f"{where}: properties must be an object")
            compiled = {k: self.node(v, f"{where}/properties/{k}") for k, v in properties.items()}
            required = schema.get("required", [])
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                raise SchemaError(f"{where}: required must be a list of property names")
            missing = sorted(set(required) - set(compiled))
            extra = schema.get("additionalProperties", False)
            if missing and extra is False:
                raise SchemaError(f"{where}: required {missing} are not among the properties")
            additional = None if extra is False else self.node(extra, f"{where}/additionalProperties")
            if not compiled and additional is None and "properties" not in schema:
                additional = ANY  # a bare {"type": "object"}: any object
            return Node("object", properties=compiled, required=frozenset(required),
                        additional=additional)  # fmt: skip
        if kind == "array":
            items = self.node(schema.get("items", True), f"{where}/items")
            low, high = schema.get("minItems", 0), schema.get("maxItems")
            if not _count(low) or (high is not None and not _count(high)):
                raise SchemaError(f"{where}: minItems and maxItems must be integers >= 0")
            if high is not None and high < low:  # no array fits: decoding would reach a dead end
                raise SchemaError(f"{where}: maxItems {high} is below minItems {low}")
            return Node("array", items=items, min_items=low, max_items=high)
        if kind == "string":
            return Node(kind, string=_string_rules(schema, where))
        if kind in ("number", "integer"):
            return Node(kind, bounds=_number_bounds(schema, kind == "integer", where))
        return Node(kind)

    def _allowed_values(
        self, schema: dict[str, Any], encoded: tuple[bytes, ...], where: str
    ) -> tuple[bytes, ...]:
        """The enum's (or const's) values that the schema's other keywords allow too: an
        instance must satisfy them all (`{"type": "string", "enum": ["a", 1]}` allows only
        "a"), and the decoder writes the values as they are, so the others are dropped here."""
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        kept = encoded
        if any(k not in _ANNOTATIONS for k in rest):
            from server.engine.schema_prefix import SchemaPrefix  # it reads compiled nodes

            # each value as the one property of an object, followed as the decoder would
            node = self.node(rest, where)
            holder = Node("object", properties={"v": node}, required=frozenset({"v"}))
            kept = tuple(v for v in encoded
                         if SchemaPrefix(holder).feed_all(b'{"v":' + v + b"}"))  # fmt: skip
        if "const" in schema and isinstance(schema.get("enum"), list):  # const among the enum
            kept = tuple(v for v in kept if v in {_compact(e, where) for e in schema["enum"]})
        if not kept:
            raise SchemaError(
                f"{where}: no value of enum/const is allowed by the rest of the schema"
            )
        return kept

    def _branches(self, schema: dict[str, Any], key: str, where: str) -> Node:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise SchemaError(f"{where}: {key} must be a non-empty list")
        rest = {k: v for k, v in schema.items() if k not in _ANNOTATIONS and k != key}
        if rest:
            raise SchemaError(f"{where}: {key} beside {', '.join(sorted(rest))} is not supported")
        nodes = [self.node(b, f"{where}/{key}/{i}") for i, b in enumerate(branches)]
        if key == "allOf":
            if len(nodes) != 1:
                raise SchemaError(f"{where}: allOf with more than one schema is not supported")
            return nodes[0]
        return nodes[0] if len(nodes) == 1 else _union(nodes, where)

    def _ref(self, schema: dict[str, Any], where: str) -> Node:
        ref = schema["$ref"]
        parts = ref.split("/") if isinstance(ref, str) else []
        if parts[:1] != ["#"] or len(parts) != 3 or parts[1] not in ("$defs", "definitions"):
            raise SchemaError(f"{where}: only $ref to #/$defs/NAME is supported, got {ref!r}")
        if ref in self._refs:
            return self._refs[ref]
        defs = self._root.get(parts[1], {})
        if not isinstance(defs, dict):
            raise SchemaError(f"{where}: $ref {ref!r}: #/{parts[1]} must be an object of schemas")
        target = defs.get(parts[2])
        if target is None:
            raise SchemaError(f"{where}: $ref {ref!r} points at nothing")
        placeholder = Node("any")  # filled in below; a recursive reference finds it
        self._refs[ref] = placeholder
        compiled = self.node(target, ref)
        placeholder.__dict__.update(compiled.__dict__)
        return placeholder


_STRING_KEYS = ("minLength", "maxLength", "pattern")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _string_rules(schema: dict[str, Any], where: str) -> StringRules | None:
    named = schema.get("format")
    if named is not None and not isinstance(named, str):
        raise SchemaError(f"{where}: format must be a string, got {named!r}")
    shape = None if named is None else FORMAT_PATTERNS.get(named)
    if not any(k in schema for k in _STRING_KEYS) and shape is None:
        return None
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if not _count(low) or (high is not None and not _count(high)):
        raise SchemaError(f"{where}: minLength and maxLength must be integers >= 0")
    if high is not None and high < low:
        raise SchemaError(f"{where}: maxLength {high} is below minLength {low}")
    pattern = schema.get("pattern")
    if shape is not None:
        if pattern is not None:
            raise SchemaError(
                f"{where}: format {schema['format']!r} and a pattern cannot both be enforced"
            )
        return _satisfiable(StringRules(low, high, shape), where)
    if pattern is not None:
        if not isinstance(pattern, str):
            raise SchemaError(f"{where}: pattern must be a string")
        try:
            search_regex(pattern)
        except RegexError as exc:
            raise SchemaError(f"{where}: the pattern cannot be followed: {exc}") from exc
    return _satisfiable(StringRules(low, high, pattern), where)


def _satisfiable(rules: StringRules, where: str) -> StringRules:
    """`rules`, unless no string within maxLength matches the pattern (decoding would be
    stuck inside the string, writing nothing it may close)."""
    if rules.pattern is None or rules.max_length is None:
        return rules
    need = search_regex(rules.pattern).start().chars_to_complete()
    if need is None or need > rules.max_length:
        raise SchemaError(
            f"{where}: no string of at most {rules.max_length} characters matches the "
            f"{'format' if rules.pattern in FORMAT_PATTERNS.values() else 'pattern'}"
        )
    return rules


def _number_bounds(schema: dict[str, Any], integer: bool, where: str) -> NumberBounds | None:
    if not any(k in schema for k in _NUMBER_KEYS):
        return None
    values: dict[str, Fraction] = {}
    for key in _NUMBER_KEYS:
        value = schema.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise SchemaError(f"{where}: {key} must be a number, got {value!r}")
        values[key] = Fraction(value)
    low = max(((values[k], k == "exclusiveMinimum") for k in ("minimum", "exclusiveMinimum")
               if k in values), default=(None, False))  # fmt: skip
    high = min(((values[k], k != "exclusiveMaximum") for k in ("maximum", "exclusiveMaximum")
                if k in values), default=(None, True))  # fmt: skip
    try:  # of a minimum and an exclusive one at the same value, the exclusive one is tighter
        return NumberBounds(low[0], low[1], high[0], not high[1], integer)
    except ValueError as exc:
        raise SchemaError(f"{where}: {exc}") from exc


def _compact(value: object, where: str) -> bytes:
    """A value as the decoder writes it: compact JSON, non-ASCII characters as themselves."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN or Infinity (Python's JSON reads them): no JSON to write
        raise SchemaError(
            f"{where}: enum/const values must be JSON (NaN and Infinity are not)"
        ) from exc
    return text.encode()


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _union(nodes: list[Node], where: str) -> Node:
    seen: set[int] = set()
    for node in nodes:
        first = node.first_bytes()
        if seen & first:
            raise SchemaError(
                f"{where}: the alternatives must start differently (say an object and null); "
                "ones that start alike cannot be told apart while decoding"
            )
        seen |= first
    return Node("union", options=tuple(nodes))
