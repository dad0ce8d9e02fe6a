"""The OpenAPI document, generated from the routes and their pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.api.native_models import ErrorResponse
from server.api.route import Route

_REF = "#/components/schemas/{model}"


def build_openapi(routes: list[Route], title: str, version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document describing `routes`."""
    inputs = {m for r in routes for m in (r.body, r.query) if m is not None}
    outputs = {m for r in routes for m in (r.response, r.events) if m is not None}
    outputs.add(ErrorResponse)
    keys = [(m, "validation") for m in _ordered(inputs)] + [
        (m, "serialization") for m in _ordered(outputs)
    ]
    refs, schema = models_json_schema(keys, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"sessionToken": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": [route.tag],
        "parameters": _parameters(route, refs),
        "responses": {
            str(route.status): _success(route, refs),
            "default": {
                "description": "An error",
                "content": {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}},
            },
        },
    }
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    if route.auth:
        op["security"] = [{"sessionToken": []}]
    return op


def _success(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    """A JSON body, server-sent events, or either (a route that streams when asked)."""
    if route.text is not None:
        return {"description": "OK", "content": {route.text: {"schema": {"type": "string"}}}}
    content: dict[str, Any] = {}
    if route.response is not None:
        content["application/json"] = {"schema": refs[(route.response, "serialization")]}
    if route.events is not None:
        content["text/event-stream"] = {"schema": refs[(route.events, "serialization")]}
    if not content:
        return {"description": "OK"}
    if route.response is None:
        description = "Server-sent events; each data line is this object"
    elif route.events is not None:
        description = "The JSON body; with stream=true, server-sent events of the stream schema"
    else:
        description = "OK"
    return {"description": description, "content": content}


def _parameters(route: Route, refs: dict[Any, Any]) -> list[dict[str, Any]]:
    params = [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in route.path.split("/")
        if part.startswith("{")
    ]
    if route.query is not None:
        for name, field in route.query.model_fields.items():
            schema = route.query.model_json_schema(ref_template=_REF)["properties"][name]
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": field.is_required(),
                    "description": field.description or "",
                    "schema": schema,
                }
            )
    return params


def _ordered(models: set[type[BaseModel]]) -> list[type[BaseModel]]:
    return sorted(models, key=lambda m: m.__name__)
