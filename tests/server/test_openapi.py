"""The OpenAPI document is generated from the routes and their pydantic models."""

from server.api import all_routes
from server.api.openapi import build_openapi


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_every_route_is_documented_and_every_reference_resolves() -> None:
    routes = all_routes()
    doc = build_openapi(routes, "Parrot", "0")
    assert doc["openapi"] == "3.1.0"
    for route in routes:
        assert route.method.lower() in doc["paths"][route.path], route.path
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    submit = doc["paths"]["/v1/sessions/{session_id}/graph"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GraphSubmission"
    }
    assert submit["security"] == [{"sessionToken": []}]
    assert [p["name"] for p in submit["parameters"]] == ["session_id"]
    assert set(schemas["CallSpec"]["properties"]) >= {"template", "inputs", "outputs", "sampling"}
    get = doc["paths"]["/v1/sessions/{session_id}/variables/{variable_id}"]["get"]
    assert {p["name"] for p in get["parameters"]} == {
        "session_id", "variable_id", "criteria", "timeout",
    }  # fmt: skip
    stream = doc["paths"]["/v1/sessions/{session_id}/variables/{variable_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
