"""Non-streamed work that stops when its client hangs up.

aiohttp does not cancel a handler when its client disconnects (handler cancellation is off by
default, and on it would cancel every route mid-mutation), so a non-streamed completion would
generate to its end for nobody, holding its KV blocks. A streamed one notices at its next write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")
POLL_S = 0.2  # how often the connection is looked at; a step of work takes ~10-200 ms here


class ClientGone(Exception):
    """The client closed its connection before the response was ready."""


async def unless_disconnected(request: web.Request, work: Awaitable[T]) -> T:
    """The result of `work`; if the client disconnects first, `work` is cancelled (its engine
    jobs abort and free their blocks) and `ClientGone` is raised."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise ClientGone()
    finally:
        if not task.done():  # the handler itself was cancelled
            task.cancel()
