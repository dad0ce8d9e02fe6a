"""Operations: health, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import importlib.metadata

from aiohttp import web

from server.api.native_models import Health
from server.api.route import Route, json_response
from server.keys import CONFIG, DRIVER, ENGINES, METRICS, OPENAPI, SESSIONS

_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
try:
    _VERSION = importlib.metadata.version("parrot-serve")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    _VERSION = "unknown"


def ops_routes() -> list[Route]:
    tag = "ops"
    return [
        Route("GET", "/healthz", healthz, "Liveness: the model is loaded", tag, response=Health),
        Route("GET", "/health", health, "vLLM's readiness: 200 while an engine runs, else 503",
              tag),
        Route("GET", "/version", version, "vLLM's: the server's version", tag),
        Route("GET", "/metrics", metrics, "Prometheus metrics", tag,
              text=_PROMETHEUS),
        Route("GET", "/openapi.json", openapi, "This document", tag),
    ]  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    health = Health(
        status="ok",
        model=request.app[CONFIG].model_id,
        max_model_len=request.app[DRIVER].max_model_len,
        sessions=len(request.app[SESSIONS]),
        engines=len(request.app[ENGINES]),
        engines_running=sum(d.alive for d in request.app[ENGINES].drivers),
    )
    return json_response(health)


async def health(request: web.Request) -> web.Response:
    """An empty 200 as vLLM's, so load balancers and vLLM's probes work; 503 while no engine
    runs (they restart), when requests would be turned away."""
    if any(d.alive for d in request.app[ENGINES].drivers):
        return web.Response(status=200)
    return web.Response(status=503, headers={"Retry-After": "1"})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": _VERSION})


async def metrics(request: web.Request) -> web.Response:
    stats = await request.app[ENGINES].stats()
    text = request.app[METRICS].render(stats)
    return web.Response(body=text.encode(), headers={"Content-Type": _PROMETHEUS})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
