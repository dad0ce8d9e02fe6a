"""Middlewares: every error becomes JSON in OpenAI's shape; every request is counted and logged,
and counted in flight for shutdown's grace period."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from server import request_id
from server.api.disconnect import ClientGone
from server.api.route import Handler
from server.errors import ApiError, error_body
from server.graph import GraphError
from server.keys import CONFIG, DRAIN, METRICS
from server.log import log_event

log = logging.getLogger("server.http")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
}


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts the request in flight until its handler returns (`server.drain`)."""
    with request.app[DRAIN].tracked():
        return await handler(request)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts `parrot_http_requests_total{route,status}` and logs one line per request, with
    the request's id (`request_id`). A handler that aiohttp cancelled (only at shutdown: one
    that ignored the end of its grace period, e.g. still reading its body) has returned no
    response, and is logged as status "cancelled"."""
    start = time.perf_counter()
    rid = request_id.assign(request)
    status: int | str = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    finally:
        route = _route_label(request)
        request.app[METRICS].http_requests.inc(route=route, status=str(status))
        log_event(
            log,
            "http_request",
            method=request.method,
            route=route,
            status=status,
            ms=round((time.perf_counter() - start) * 1000, 1),
            request_id=rid,
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn exceptions into `{"error": {message, type, param, code}}` responses."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.RequestPayloadError as exc:
        # the body is not what its Content-Encoding or Transfer-Encoding header says (aiohttp
        # decodes it as it reads): the client's mistake
        reason = str(exc).rsplit("message:", 1)[-1].strip()
        encoding = request.headers.get("Content-Encoding")
        said = f" (Content-Encoding: {encoding})" if encoding else ""
        body = error_body(
            f"the request body cannot be read as its headers describe it: {reason}{said}",
            "invalid_request_error", "invalid_body_encoding",
        )  # fmt: skip
        return web.json_response(body, status=400)
    except (ClientGone, ConnectionResetError):
        # the client hung up (mid-body, or before a stream's headers went out): nobody reads
        # this, nginx's "client closed request", for the logs and the counters
        return web.Response(status=499)
    except GraphError as exc:
        body = error_body(exc.message, "invalid_request_error", exc.kind)
        return web.json_response(body, status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _http_message(request, exc)
        body = error_body(message, _TYPES.get(exc.status, "server_error"), exc.reason)
        return web.json_response(body, status=exc.status, headers=_keep_headers(exc))
    except Exception as exc:
        log.exception("unhandled error in %s %s", request.method, request.path)
        body = error_body(f"internal server error: {type(exc).__name__}: {exc}", "server_error")
        return web.json_response(body, status=500)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no route {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    if exc.status == 413:
        limit = request.app[CONFIG].max_request_mb
        return f"the request body is larger than {limit} MB, what this server takes (its " \
            "--max-request-mb)"  # fmt: skip
    return exc.text or exc.reason


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() == "allow"}


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"
