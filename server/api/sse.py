"""Server-sent events over an aiohttp stream response."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel


class EventStream:
    """`await open()`, then `send(...)` events; a client that went away raises ConnectionError."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

    async def open(self) -> web.StreamResponse:
        await self.response.prepare(self.request)
        return self.response

    async def send(self, data: BaseModel | dict[str, Any] | str, event: str | None = None) -> None:
        if isinstance(data, BaseModel):
            text = data.model_dump_json()
        elif isinstance(data, dict):
            text = json.dumps(data)
        else:
            text = data
        head = f"event: {event}\n" if event else ""
        await self.response.write(f"{head}data: {text}\n\n".encode())

    async def close(self) -> web.StreamResponse:
        await self.response.write_eof()
        return self.response
