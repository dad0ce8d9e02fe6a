"""HTTP to a Parrot server (aiohttp, on the SDK's loop): JSON calls and server-sent events.

Error responses become `ParrotError`s carrying the server's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from parrot_bridge.http_response import (
    read_json,
    request_id,
    response_error,
    timed_out,
    unreachable,
)
from parrot_bridge.server_url import server_root

# waits before sending again, as the OpenAI client's: 0.5 s, doubling, at most 8 s (2 retries
# wait 1.5 s in all; a server loading its model for longer needs more)
_RETRY_S = 0.5
_RETRY_MAX_S = 8.0


def retry_wait(attempt: int) -> float:
    """Seconds to wait before sending again after failed attempt `attempt` (from 0)."""
    return min(_RETRY_S * 2**attempt, _RETRY_MAX_S)


class Transport:
    """One aiohttp client for one server; create and use it on the SDK's loop only."""

    def __init__(
        self,
        base_url: str,
        connect_timeout: float = 10.0,
        timeout: float | None = 600.0,
        max_retries: int = 2,
        api_key: str | None = None,
    ) -> None:
        """`timeout`: seconds a response may take (beyond a long poll's wait) and a stream may
        go without a chunk; None: no limit. `max_retries`: how often a request is sent again
        when no connection could be made (a server starting or restarting), after 0.5 s, then
        1, 2, 4 and 8 s, as the OpenAI client waits; only then, since nothing reached the
        server. `api_key`: the server's (`--api-key`), sent until a session's token is set."""
        root = server_root(base_url, "the server's url")  # as the adapters' base_url
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = root
        self.timeout = timeout
        self.max_retries = max_retries
        self._connect_timeout = connect_timeout
        self._client: aiohttp.ClientSession | None = None
        self.token: str | None = None
        self._api_key = api_key

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        hold_s: float = 0.0,
    ) -> dict[str, Any]:
        """Send one request; the decoded JSON response, or `ParrotError`. `hold_s`: how long
        the server may hold it before answering (a long poll), added to the time limit."""
        for attempt in range(self.max_retries + 1):
            try:
                return await self._request(method, path, body, params, hold_s)
            except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
                if attempt == self.max_retries:
                    raise unreachable(self.base_url, exc) from exc
            await asyncio.sleep(retry_wait(attempt))
        raise AssertionError("unreachable")

    async def _request(
        self, method: str, path: str, body: Any, params: dict[str, Any] | None, hold_s: float
    ) -> dict[str, Any]:
        limit = None if self.timeout is None else self.timeout + hold_s
        timeout = aiohttp.ClientTimeout(total=limit, sock_connect=self._connect_timeout)
        try:
            async with self._session().request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                headers=self._headers(),
                timeout=timeout,
            ) as resp:
                data = await read_json(resp)
                if resp.status >= 400:
                    raise response_error(resp.status, data, request_id(resp))
                return data
        except aiohttp.ClientConnectorError:
            raise  # `request` sends it again
        except aiohttp.ClientError as exc:
            raise unreachable(self.base_url, exc) from exc
        except TimeoutError as exc:  # the total limit (aiohttp raises a bare TimeoutError)
            raise timed_out(self.base_url, f"{method} {path}", limit) from exc

    async def events(
        self, path: str, params: dict[str, Any] | None = None
    ) -> AsyncIterator[tuple[str, Any]]:
        """Server-sent events of a GET as (event name, decoded data)."""
        try:
            # the limit is between reads: a stream may last as long as it keeps sending
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=self.timeout
            )
            async with self._session().get(
                self.base_url + path, params=params, headers=self._headers(), timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    raise response_error(resp.status, await read_json(resp), request_id(resp))
                event, data = "message", []
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif not line and data:
                        yield event, json.loads("\n".join(data))
                        event, data = "message", []
        except aiohttp.SocketTimeoutError as exc:
            raise timed_out(self.base_url, f"GET {path}", self.timeout) from exc
        except aiohttp.ClientError as exc:
            raise unreachable(self.base_url, exc) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession()  # each request sets its time limits
        return self._client

    def _headers(self) -> dict[str, str]:
        """A session's routes take its token; the others (opening it) the server's key."""
        credential = self.token or self._api_key
        return {"Authorization": f"Bearer {credential}"} if credential else {}
