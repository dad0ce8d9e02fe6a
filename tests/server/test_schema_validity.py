"""`schema_problem`: JSON Schema's meta-schema rules, on what a client can send."""

from __future__ import annotations

import pytest

from server.api.schema_validity import MAX_DEPTH, schema_problem


@pytest.mark.parametrize(
    "schema",
    [
        {}, True, False, {"type": "object", "properties": {}},
        {"x-vendor": [1, 2], "const": None, "default": {"a": 1}},  # unknown keywords and any values
        {"items": [{"type": "string"}], "additionalItems": False},  # draft 7's tuple
        {"prefixItems": [{}], "items": False, "$defs": {"a": {"$ref": "#"}}},  # 2020-12's
        {"dependencies": {"a": ["b"], "c": {"required": ["d"]}}},
        {"dependentRequired": {"a": ["b"]}, "maxLength": 3.0},  # 3.0 is an integer in JSON
        {"properties": {"a": {"required": True}}},  # draft 3's flag, still met
    ],
)  # fmt: skip
def test_valid_schemas_have_no_problem(schema: object):
    assert schema_problem(schema) is None


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": ["string", "string"]}, "#/type: must be one of"),
        ({"type": []}, "#/type: must be one of"),
        ({"items": [{"type": 1}]}, "#/items/0/type: must be one of"),
        ({"not": 3}, "#/not: a schema must be an object or a boolean, got 3"),
        ({"required": ["a", "a"]}, "#/required: names a property twice"),
        ({"dependencies": {"a": [1]}}, "#/dependencies/a: must be a list of property names"),
        ({"multipleOf": 0}, "#/multipleOf: must be a number > 0"),
        ({"maxItems": -(10**400)}, "#/maxItems: must be an integer"),
        ({"minimum": float("nan")}, "#/minimum: must be a number"),
        ({"pattern": 5}, "#/pattern: must be a string"),
        ({"uniqueItems": "yes"}, "#/uniqueItems: must be true or false"),
        ({"enum": "a"}, "#/enum: must be a list"),
    ],
)  # fmt: skip
def test_invalid_schemas_name_the_place_and_the_rule(schema: object, problem: str):
    assert (schema_problem(schema) or "").startswith(problem)


def test_a_deep_schema_is_a_problem_not_a_recursion_error():
    schema: dict = {}
    for _ in range(5000):
        schema = {"not": schema}
    assert f"nests more than {MAX_DEPTH} levels" in (schema_problem(schema) or "")
    assert schema_problem({"maxLength": 10**400}) is None  # no float overflow
