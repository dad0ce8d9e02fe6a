"""Operations: health, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from server.api.native_models import Health
from server.api.route import Route, json_response
from server.keys import CONFIG, DRIVER, ENGINES, METRICS, OPENAPI, SESSIONS

_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def ops_routes() -> list[Route]:
    tag = "ops"
    return [
        Route("GET", "/healthz", healthz, "Liveness: the model is loaded", tag, response=Health),
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


async def metrics(request: web.Request) -> web.Response:
    stats = await request.app[ENGINES].stats()
    text = request.app[METRICS].render(stats)
    return web.Response(body=text.encode(), headers={"Content-Type": _PROMETHEUS})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
