"""The OpenAPI document is generated from the routes and their pydantic models."""

from server.api import all_routes
from server.api.openai_models import AssistantMessage, ChatDelta
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


def test_vllms_token_id_fields_are_documented() -> None:
    """The request fields and the response fields they add, with their descriptions (a model
    serializer that drops unasked fields would leave the response schemas without fields)."""
    schemas = build_openapi(all_routes(), "Parrot", "0")["components"]["schemas"]
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        for field in ("return_token_ids", "return_tokens_as_token_ids"):
            assert schemas[name]["properties"][field]["description"].startswith("vLLM's")
    returned = {"CompletionChoice": ("prompt_token_ids", "token_ids"),
                "ChatCompletion": ("prompt_token_ids",), "ChatChoice": ("token_ids",)}  # fmt: skip
    for name, fields in returned.items():
        for field in fields:
            assert "return_token_ids" in schemas[name]["properties"][field]["description"]


def test_response_fields_left_out_when_empty_are_still_in_the_schemas() -> None:
    schemas = build_openapi(all_routes(), "Parrot", "0")["components"]["schemas"]
    assert "tool_calls" in schemas["AssistantMessage"]["properties"]
    delta = ChatDelta.model_json_schema(mode="serialization")["properties"]
    assert {"role", "content", "tool_calls"} <= set(delta)
    # and left out of what is sent when empty; an empty content is content
    assert ChatDelta(role="assistant", content="").model_dump() == {"role": "assistant",
                                                                   "content": ""}  # fmt: skip
    assert AssistantMessage(content="hi").model_dump() == {"role": "assistant", "content": "hi"}


def test_routes_that_stream_when_asked_document_both_bodies() -> None:
    """Completions, chat and responses answer JSON, or server-sent events with stream=true."""
    paths = build_openapi(all_routes(), "Parrot", "0")["paths"]
    expected = {"/v1/completions": ("Completion", "Completion"),
                "/v1/chat/completions": ("ChatCompletion", "ChatCompletionChunk"),
                "/v1/responses": ("ResponseObject", "ResponseStreamEvent")}  # fmt: skip
    for path, (body, event) in expected.items():
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert content["application/json"]["schema"]["$ref"].endswith("/" + body), path
        assert content["text/event-stream"]["schema"]["$ref"].endswith("/" + event), path
    schemas = build_openapi(all_routes(), "Parrot", "0")["components"]["schemas"]
    assert {"delta", "finish_reason"} <= set(schemas["ChatChunkChoice"]["properties"])
    assert {"type", "sequence_number"} <= set(schemas["ResponseStreamEvent"]["properties"])
