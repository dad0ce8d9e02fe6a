"""Cross-origin access for browser apps (`--allowed-origins`): which origins may call the API,
preflight answers, and the headers that let a page read responses, streamed ones included."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from server.errors import error_body

if TYPE_CHECKING:  # server.api imports the config, which imports this
    from server.api.route import Handler

_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
_DEFAULT_HEADERS = "Authorization, Content-Type"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """`origins`: exact origins (`scheme://host[:port]`), or "*" for any (then no credentials
    are sent, as browsers require)."""

    origins: tuple[str, ...]
    max_age_s: int = 600

    def __post_init__(self) -> None:
        for origin in self.origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"allowed origin {origin!r} must be '*' or scheme://host[:port] (no path)"
                )

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin`, or None."""
        if origin is None:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None


def preflight_middleware(
    policy: CorsPolicy,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Answers a browser's preflight (OPTIONS with Access-Control-Request-Method) for an allowed
    origin; 403 for another; every other request goes on."""

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or method is None:
            return await handler(request)
        if policy.allow_origin(request.headers.get("Origin")) is None:
            message = "this origin is not allowed to call the API (see --allowed-origins)"
            return web.json_response(error_body(message, "permission_error"), status=403)
        asked = request.headers.get("Access-Control-Request-Headers")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": asked or _DEFAULT_HEADERS,
            "Access-Control-Max-Age": str(policy.max_age_s),
        })  # fmt: skip

    return preflight


def cors_headers(policy: CorsPolicy) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` signal handler: the allow-origin header on every response to an
    allowed origin, set before the headers go out (so streamed responses carry it too)."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        allowed = policy.allow_origin(request.headers.get("Origin"))
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"  # readable by scripts
        if allowed != "*":
            response.headers["Vary"] = "Origin"

    return add_headers
