"""The server's OpenAI-compatible routes, for the plain (graph-less) LLM methods: completions,
chat completions (the chat template is applied on the server) and the model card."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from parrot_bridge.errors import ParrotError
from parrot_bridge.http_response import (
    data_events,
    read_json,
    request_id,
    timed_out,
    unreachable,
)
from parrot_bridge.transport import retry_wait


class OpenAIHttp:
    """One aiohttp client for one server; use it on the SDK's loop only.

    `timeout_s` bounds a request's answer and, in a stream, the wait for each chunk (as the
    OpenAI client's `timeout`: a stream lasts as long as it keeps sending). `max_retries`:
    how often a request that could not connect is sent again (nothing reached the server),
    waiting as the OpenAI client does."""

    def __init__(
        self, base_url: str, timeout_s: float, api_key: str | None = None, max_retries: int = 3
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        # the server's --api-key, as a bearer token
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client: aiohttp.ClientSession | None = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, return the decoded response or raise `ParrotError` with the server's
        message."""
        return await self._call("POST", path, body)

    async def get(self, path: str) -> dict[str, Any]:
        return await self._call("GET", path, None)

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST with `stream: true`; yield each server-sent chunk until `[DONE]`."""
        try:
            resp = await self._connected(
                lambda: self._session().post(
                    self.base_url + path, json={**body, "stream": True},
                    timeout=self._stream_timeout,
                )
            )  # fmt: skip
            async with resp:
                if resp.status >= 400:
                    raise _error(path, resp.status, await read_json(resp), request_id(resp))
                async for chunk in data_events(resp):
                    if "error" in chunk:
                        raise _error(path, 500, chunk, request_id(resp))
                    yield chunk
        except aiohttp.ServerTimeoutError as exc:  # a ClientError too: no chunk in time
            raise timed_out(self.base_url, f"POST {path}", self._timeout.total) from exc
        except aiohttp.ClientError as exc:
            raise unreachable(self.base_url, exc) from exc
        except TimeoutError as exc:
            raise timed_out(self.base_url, f"POST {path}", self._timeout.total) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            resp = await self._connected(
                lambda: self._session().request(method, self.base_url + path, json=body)
            )
            async with resp:
                data = await read_json(resp)
                if resp.status >= 400:
                    raise _error(path, resp.status, data, request_id(resp))
                return data
        except aiohttp.ClientError as exc:
            raise unreachable(self.base_url, exc) from exc
        except TimeoutError as exc:
            raise timed_out(self.base_url, f"{method} {path}", self._timeout.total) from exc

    async def _connected(
        self, send: Callable[[], Awaitable[aiohttp.ClientResponse]]
    ) -> aiohttp.ClientResponse:
        """`send()`'s response, sending again while no connection can be made (a server
        starting or restarting); the last refusal is raised."""
        for attempt in range(self.max_retries):
            try:
                return await send()
            except aiohttp.ClientConnectorError:  # no connection: nothing was sent
                await asyncio.sleep(retry_wait(attempt))
        return await send()

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._client


def _error(path: str, status: int, data: Any, rid: str | None) -> ParrotError:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(data)}
    # type and code kept, as the SDK's other clients keep them, for callers that branch on them
    return ParrotError(
        f"{path}: HTTP {status}: {error.get('message')}",
        status=status,
        type=error.get("type"),
        code=error.get("code"),
        request_id=rid,
    )
