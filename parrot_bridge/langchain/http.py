"""HTTP to the Parrot server's OpenAI-compatible and adapter routes, on the SDK's loop.

One aiohttp client per request keeps nothing open between calls (LangChain models live long and
are never closed). Connection failures are retried; error responses become `ParrotError`s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from parrot_bridge.errors import ParrotError
from parrot_bridge.http_response import (
    data_events,
    read_json,
    request_id,
    response_error,
    timed_out,
    unreachable,
)
from parrot_bridge.server_url import server_root
from parrot_bridge.transport import retry_wait


@dataclass(frozen=True, slots=True)
class ServerHttp:
    base_url: str
    timeout: float | None = None
    max_retries: int = 2
    api_key: str | None = None  # the server's --api-key, sent as a bearer token

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", server_root(self.base_url, "base_url"))
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One JSON request (retried when the server cannot be reached)."""
        for attempt in range(self.max_retries + 1):
            try:
                async with self._client() as client:
                    async with client.request(method, self._url(path), json=body) as resp:
                        data = await read_json(resp)
                        if resp.status >= 400:
                            raise response_error(resp.status, data, request_id(resp))
                        return data
            except aiohttp.ClientConnectionError as exc:
                if attempt == self.max_retries:
                    raise self._unreachable(exc) from exc
                await asyncio.sleep(retry_wait(attempt))
            except TimeoutError as exc:  # `timeout` passed (aiohttp raises a bare TimeoutError)
                raise timed_out(self.base_url, f"{method} {path}", self.timeout) from exc
        raise AssertionError("unreachable")

    async def events(self, path: str, body: Any) -> AsyncIterator[dict[str, Any]]:
        """The `data:` objects of a streamed POST, until `data: [DONE]`. `timeout` bounds the
        wait for the answer and then for each chunk, not the whole stream (as the OpenAI
        client's `timeout` does: a stream lasts as long as it keeps sending); a stream that
        could not connect is sent again, as a request is."""
        try:
            async with self._client(stream=True) as client:
                resp = await self._connected(lambda: client.post(self._url(path), json=body))
                async with resp:
                    if resp.status >= 400:
                        raise response_error(
                            resp.status, await read_json(resp), request_id(resp)
                        )
                    async for event in data_events(resp):
                        if "error" in event:
                            raise response_error(500, event, request_id(resp))
                        yield event
        except aiohttp.ServerTimeoutError as exc:  # a ClientError too: no chunk in time
            raise timed_out(self.base_url, f"POST {path}", self.timeout) from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise timed_out(self.base_url, f"POST {path}", self.timeout) from exc

    async def _connected(
        self, send: Callable[[], Awaitable[aiohttp.ClientResponse]]
    ) -> aiohttp.ClientResponse:
        """`send()`'s response, sent again while no connection can be made (nothing reached
        the server); the last refusal is raised."""
        for attempt in range(self.max_retries):
            try:
                return await send()
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(retry_wait(attempt))
        return await send()

    def _client(self, stream: bool = False) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
            if stream
            else aiohttp.ClientTimeout(total=self.timeout)
        )
        return aiohttp.ClientSession(timeout=timeout, headers=headers)

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def _unreachable(self, exc: Exception) -> ParrotError:
        return unreachable(self.base_url, exc)
