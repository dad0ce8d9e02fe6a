"""Request ids, as OpenAI's API and vLLM give them: every response carries `X-Request-Id` (the
client's own when it sent a usable one, else a fresh one), and the access log line names it,
so a client's failed call can be found in the server's logs (OpenAI's client reports it as an
error's `request_id`)."""

from __future__ import annotations

import re
import secrets

from aiohttp import web

HEADER = "X-Request-Id"
_KEY = web.RequestKey("parrot_request_id", str)
_USABLE = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe in a header and a log


def assign(request: web.Request) -> str:
    """The request's id (the client's if usable), kept on the request for its response."""
    given = request.headers.get(HEADER, "")
    rid = given if _USABLE.fullmatch(given) else f"req_{secrets.token_hex(12)}"
    request[_KEY] = rid
    return rid


async def add_header(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal handler: the id on every response, streamed ones too
    (set before their headers go out)."""
    rid = request.get(_KEY)
    if rid is not None:
        response.headers[HEADER] = rid
