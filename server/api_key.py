"""`--api-key`: the API answers only callers that send the key, as vLLM's and OpenAI's do."""

from __future__ import annotations

import hmac

from aiohttp import web

from server.api.route import Handler
from server.errors import ApiError

# open without the key: probes, the version, metrics scrapers and the API's description
OPEN_PATHS = frozenset({"/health", "/healthz", "/version", "/metrics", "/openapi.json"})
# a session's own routes take the session's token instead: only a caller with the key could
# open the session and get it
SESSION_PREFIX = "/v1/sessions/"


def api_key_middleware(key: str) -> web.middleware:  # type: ignore[valid-type]
    """Refuse (401, OpenAI's `invalid_api_key`) a request to a guarded route without
    `Authorization: Bearer <key>`; the comparison takes the same time for any wrong key."""
    expected = key.encode()

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith(SESSION_PREFIX):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else None
        if given is None:
            raise _refused("this server needs an API key: send 'Authorization: Bearer <key>'")
        # aiohttp decodes a header's bytes that are no UTF-8 to surrogates: back to them
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise _refused("the API key sent in 'Authorization: Bearer <key>' is not this server's")
        return await handler(request)

    return check_key


def _refused(message: str) -> ApiError:
    return ApiError(401, message, type="invalid_request_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
