"""Reading a Parrot server's HTTP responses: JSON bodies, error bodies and OpenAI-style streams.

Shared by the SDK's transport and the LangChain and LlamaIndex adapters' HTTP clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from parrot_bridge.errors import ParrotError


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    """The decoded body; a body that is not JSON becomes an OpenAI-style error object."""
    text = await resp.text()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"error": {"message": text[:500] or resp.reason, "type": "http_error"}}


def response_error(status: int, data: Any, request_id: str | None = None) -> ParrotError:
    """A `ParrotError` carrying the server's message, type and code where it sent them, and
    the response's request id."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return ParrotError(
            str(error.get("message")), status=status, type=error.get("type"),
            code=error.get("code"), request_id=request_id,
        )  # fmt: skip
    return ParrotError(f"HTTP {status}: {data}", status=status, request_id=request_id)


def request_id(resp: aiohttp.ClientResponse) -> str | None:
    """The server's id of the request `resp` answers (`X-Request-Id`)."""
    return resp.headers.get("X-Request-Id")


def unreachable(base_url: str, exc: Exception) -> ParrotError:
    return ParrotError(f"cannot reach the Parrot server at {base_url}: {exc}")


def timed_out(base_url: str, request: str, timeout: float | None) -> ParrotError:
    """For a request whose client-side time limit passed (aiohttp raises a bare TimeoutError);
    its `code` is "timeout" (and it has no `status`)."""
    return ParrotError(
        f"the Parrot server at {base_url} did not answer {request} within {timeout} s",
        code="timeout",
    )


async def data_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The decoded `data:` objects of an OpenAI-style event stream, until `data: [DONE]`.

    An object with an `error` key is yielded like any other: the caller decides how it fails.
    """
    async for raw in resp.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
