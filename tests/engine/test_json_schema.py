"""Structured outputs: schemas compiled and followed byte by byte, checked with pydantic (the
schemas are pydantic models' own), and the engine's schema-constrained generation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from server.engine import LLMEngine, SamplingParams
from server.engine.json_schema import MAX_SCHEMA_DEPTH, SchemaError, compile_schema
from server.engine.schema_prefix import SchemaPrefix


class Address(BaseModel):
    city: str
    zip_code: int | None = None


class Person(BaseModel):
    name: str
    age: int
    height: float
    admin: bool
    role: Literal["owner", "guest", "r\u00f4le \"x\""]
    tags: list[str]
    home: Address
    scores: dict[str, int] = {}
    note: str | None = None


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


def follows(schema: dict, text: str | bytes) -> SchemaPrefix | None:
    state = SchemaPrefix(compile_schema(schema))
    data = text.encode() if isinstance(text, str) else text
    return state if state.feed_all(data) else None


def random_person(rng: random.Random) -> Person:
    word = lambda: "".join(rng.choice('ab \u00e9\u4e2d"\\\n') for _ in range(rng.randint(0, 5)))  # noqa: E731
    return Person(
        name=word(), age=rng.randint(-99, 99), height=rng.uniform(-5, 5) * 10 ** rng.randint(-3, 3),
        admin=rng.random() < 0.5, role=rng.choice(["owner", "guest", "r\u00f4le \"x\""]),
        tags=[word() for _ in range(rng.randint(0, 3))],
        home=Address(city=word(), zip_code=rng.choice([None, rng.randint(0, 99999)])),
        scores={word(): rng.randint(0, 9) for _ in range(rng.randint(0, 2))},
        note=rng.choice([None, word()]),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(30))
def test_every_valid_instance_in_the_schemas_key_order_is_followed_to_the_end(seed: int):
    rng = random.Random(seed)
    value = random_person(rng).model_dump()
    keys = list(value)
    if rng.random() < 0.5:
        keys = [k for k in keys if k not in ("scores", "note")]  # optional ones left out
    # enum values match their compact JSON, non-ASCII as itself (what the decoder writes)
    text = json.dumps({k: value[k] for k in keys}, indent=rng.choice([None, 1]),
                      ensure_ascii=False)  # fmt: skip
    state = SchemaPrefix(compile_schema(Person.model_json_schema()))
    for i, b in enumerate(text.encode()):
        assert not state.complete
        assert state.feed(b), (text, i, text.encode()[: i + 1])
    assert state.complete
    assert not state.copy().feed(ord(" "))
    Person.model_validate_json(text)


VALID = '{"name":"a","age":1,"height":2.5,"admin":true,"role":"guest","tags":[],"home":{"city":"c"}'
BEFORE_ROLE = '{"name":"a","age":1,"height":2.5,"admin":true,'
BEFORE_HOME = VALID.removesuffix('{"city":"c"}')


@pytest.mark.parametrize(
    "bad",
    [
        VALID + ',"age":2}',  # a key twice
        VALID + ',"nick":"x"}',  # not a property
        '{"name":"a","age":1}',  # required keys missing before the close
        '{"age":1',  # a required key left out (keys come in the schema's order)
        '{"name":"a","height":1',
        VALID + ',"note":null,"scores":{}}',  # two optional keys out of order
        '{"name":1',  # a number for a string
        '{"name":"a","age":1.5',  # a fraction for an integer
        '{"name":"a","age":"1"',
        BEFORE_ROLE + '"role":"admin"',  # not in the enum
        BEFORE_HOME + '{"city":"c","zip_code":"x"',
        BEFORE_HOME + '{"zip":1',
        '{"name":"a","age":1,"height":2.5,"admin":yes',
        BEFORE_ROLE + '"role":"guest","tags":[1',
        VALID + ',"scores":{"a":"b"',  # additionalProperties: integer values
        VALID + ',"note":nul}',
        '["a"]',  # the root is an object
    ],
)
def test_text_the_schema_does_not_allow_is_refused(bad: str):
    assert follows(Person.model_json_schema(), bad) is None


def test_recursion_unions_limits_and_free_keys():
    tree = Tree.model_json_schema()
    assert follows(tree, '{"label":"r","children":[{"label":"a","children":[{"label":"b"}]}]}')
    assert follows(tree, '{"label":"r","children":[{"lab":1') is None
    listed = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"},
              "minItems": 1, "maxItems": 2}, "n": {"type": ["integer", "null"]}},
              "required": ["xs"]}  # fmt: skip
    assert follows(listed, '{"xs":[1,2]}').complete
    assert follows(listed, '{"xs":[1,2,') is None
    assert follows(listed, '{"xs":[]') is None
    assert follows(listed, '{"xs":[3],"n":null}').complete
    assert follows(listed, '{"n":null,"xs":[3]}') is None  # not in the schema's order
    free = {"type": "object", "properties": {"a": {"type": "string"}},
            "additionalProperties": {"type": "boolean"}}  # fmt: skip
    assert follows(free, '{"a":"x","ab":true,"b\\n":false}').complete
    assert follows(free, '{"ab":"x"') is None
    assert follows({"type": "object"}, '{"any":[1,{"b":null}],"x":"y"}').complete
    assert follows({"type": "object", "properties": {"c": {"const": 3}}}, '{"c":4') is None


def test_an_ill_formed_free_key_is_refused_not_raised():
    # a free key is read by json.loads once it closes: its bytes must be UTF-8 by then (an
    # overlong F0 85 ... raised UnicodeDecodeError out of the engine's step)
    free = {"type": "object", "additionalProperties": {"type": "boolean"}}
    assert follows(free, b'{"\xf0\x85') is None and follows(free, b'{"\xed\xa0\x80') is None
    assert follows(free, '{"\U0001f99c":true}'.encode()).complete


def test_enum_and_const_values_are_held_to_the_keywords_beside_them():
    # an instance must satisfy every keyword: the values that the others refuse are dropped
    def schema(value: dict) -> dict:
        return {"type": "object", "properties": {"v": value}, "required": ["v"]}

    mixed = schema({"type": "string", "enum": ["a", 1, "abc"], "maxLength": 2})
    assert follows(mixed, '{"v":"a"}').complete
    assert follows(mixed, '{"v":1') is None and follows(mixed, '{"v":"ab') is None
    both = schema({"const": "\u00e9", "enum": ["\u00e9", "b"]})
    assert follows(both, '{"v":"\u00e9"}'.encode()).complete and follows(both, '{"v":"b') is None
    assert follows(schema({"enum": ["a", None], "title": "t"}), '{"v":null}').complete


class Pet(BaseModel):
    """pydantic's Field constraints: lengths, patterns and bounds, as its schema writes them."""

    name: str = Field(min_length=2, max_length=6, pattern=r"^[A-Z][a-z]+$")
    code: str = Field(pattern=r"\d{2}", max_length=4)
    age: int = Field(ge=0, le=30)
    weight: float = Field(gt=0.5, lt=12.25)
    legs: int = Field(gt=-3, le=4)
    note: str | None = Field(default=None, max_length=3)


def test_random_walks_through_field_constraints_end_in_what_pydantic_accepts():
    """Bytes drawn at random among those the automaton allows never leave it stuck, and every
    finished text is an instance pydantic validates."""
    node = compile_schema(Pet.model_json_schema())
    alphabet = [bytes([b]) for b in range(32, 127)] + ["é".encode()]
    rng = random.Random(5)
    for _ in range(40):
        state, text = SchemaPrefix(node), b""
        while not state.complete:
            allowed = [c for c in alphabet if state.copy().feed_all(c)]
            assert allowed, text  # never stuck
            # favour a closing quote when it is allowed, so that strings end
            pick = b'"' if b'"' in allowed and rng.random() < 0.3 else rng.choice(allowed)
            assert state.feed_all(pick)
            text += pick
        Pet.model_validate_json(text)  # raises if the text breaks a constraint


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "object", "properties": {"s": {"type": "string", "pattern": "(?=a)"}}},
         "#/properties/s: the pattern cannot be followed"),
        ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}},
         "multipleOf cannot be enforced"),
        ({"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 4,
                                                 "exclusiveMaximum": 5}}}, "no integer lies"),
        ({"type": "object", "properties": {"s": {"maxLength": 1, "minLength": 3}}},
         "maxLength 1 is below minLength 3"),
        ({"type": "object", "properties": {"n": {"type": "number", "minimum": "0"}}},
         "minimum must be a number"),
        ({"type": "object", "properties": {"u": {"anyOf": [
            {"type": "object"}, {"type": "object", "properties": {}}]}}}, "start differently"),
        ({"type": "array"}, "root must be an object"),
        ({"type": "object", "properties": {"r": {"$ref": "#/$defs/Nope"}}}, "points at nothing"),
        ({"type": "object", "required": ["x"]}, "not among the properties"),
        ({"type": "object", "properties": {"xs": {"type": "array", "minItems": 3,
          "maxItems": 1}}}, "maxItems 1 is below minItems 3"),
        ({"type": "object", "properties": {"c": {"type": "integer", "minimum": 5, "const": 3}}},
         "no value of enum/const is allowed"),
    ],
)  # fmt: skip
def test_schemas_that_cannot_be_enforced_are_refused_by_name(schema: dict, message: str):
    with pytest.raises(SchemaError, match=message):
        compile_schema(schema)


def _holding(value: dict) -> dict:
    return {"type": "object", "properties": {"v": value}}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (_holding({"type": 1.5}), "#/properties/v: type must name object, .*got 1.5"),
        (_holding({"type": ["string", {}]}), "type must name object"),
        ({"type": "object", "properties": {"a": {}}, "required": 5},
         "#: required must be a list of property names"),
        ({"type": "object", "properties": {"a": {}}, "required": [["a"]]},
         "required must be a list of property names"),
        (_holding({"$ref": {}}), "only \\$ref to #/\\$defs/NAME is supported, got {}"),
        (_holding({"$ref": ["#"]}), "only \\$ref to #/\\$defs/NAME is supported"),
        ({**_holding({"$ref": "#/$defs/A"}), "$defs": ["A"]}, "#/\\$defs must be an object"),
        (_holding({"enum": ["a", float("nan")]}), "enum/const values must be JSON"),
        (_holding({"const": float("inf")}), "enum/const values must be JSON"),
        # a keyword that reads as nothing is shown quoted (before: "#/properties/v:  cannot...")
        (_holding({"type": "string", "": 1, " ": 2}), "#/properties/v: '', ' ' cannot be"),
    ],
)  # fmt: skip
def test_malformed_schemas_are_refused_by_name_not_raised(schema: dict, message: str):
    # before: TypeError or AttributeError out of the compiler (a 500), or for NaN a constraint
    # whose output was no JSON
    with pytest.raises(SchemaError, match=message):
        compile_schema(schema)


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def test_the_engine_writes_what_the_schema_allows(engine: LLMEngine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
              "n": {"type": "integer"}, "kind": {"enum": ["a", "b"]}},
              "required": ["ok", "n", "kind"]}  # fmt: skip
    prompts = [engine.tokenizer.encode(p) for p in ("Return JSON:", "A cat", "x y z {")]
    for sampling in (
        SamplingParams(max_tokens=64, temperature=0, json_object=True, json_schema=schema),
        SamplingParams(max_tokens=64, temperature=1.0, seed=2, json_object=True,
                       json_schema=schema),
    ):  # fmt: skip
        for out in engine.generate(prompts, sampling):
            assert follows(schema, out.text) is not None, out.text
            if out.finish_reason == "stop":
                value = json.loads(out.text)
                assert set(value) == {"ok", "n", "kind"} and value["kind"] in ("a", "b")
                assert isinstance(value["ok"], bool) and isinstance(value["n"], int)
    with pytest.raises(ValueError, match="pattern"):
        SamplingParams(json_object=True, json_schema={"type": "object", "properties": {
            "s": {"type": "string", "pattern": "\\1"}}})  # fmt: skip


def _nested_arrays(levels: int) -> dict:
    """An object whose key "a" holds arrays nested so that the schema is `levels` JSON
    containers deep (the root, `properties` and the string's own schema take three)."""
    inner: dict = {"type": "string"}
    for _ in range(levels - 3):
        inner = {"type": "array", "items": inner}
    return {"type": "object", "properties": {"a": inner}, "required": ["a"]}


def test_a_schema_nested_too_deeply_is_refused_by_depth_not_by_the_stack():
    # before: a RecursionError (a 500) from ~330 levels, sent in a few kilobytes
    deepest = _nested_arrays(MAX_SCHEMA_DEPTH)
    state = SchemaPrefix(compile_schema(deepest))
    arrays = MAX_SCHEMA_DEPTH - 3
    assert state.feed_all(b'{"a":' + b"[" * arrays + b'"s"' + b"]" * arrays + b"}")
    assert state.complete
    for levels in (MAX_SCHEMA_DEPTH + 1, 2_000):
        with pytest.raises(SchemaError, match=f"more than {MAX_SCHEMA_DEPTH} levels deep"):
            compile_schema(_nested_arrays(levels))


def test_a_schema_compiled_again_is_found_and_its_property_order_counts():
    """A request's schema is compiled in a worker thread, then where it is checked and where
    its sampling is built: the nodes are built once; properties keep their order."""
    ab = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    ba = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    first = compile_schema(ab)
    assert compile_schema(json.loads(json.dumps(ab))) is first
    assert list(compile_schema(ba).properties) == ["b", "a"]
    assert list(compile_schema(ab).properties) == ["a", "b"]
