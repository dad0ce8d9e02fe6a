"""Non-streamed work that stops when its client hangs up.

aiohttp does not cancel a handler when its client disconnects (handler cancellation is off by
default, and on it would cancel every route mid-mutation), so a non-streamed completion would
generate to its end for nobody, holding its KV blocks. A streamed one notices at its next write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
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
            if _gone(request):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise ClientGone()
    finally:
        if not task.done():  # the handler itself was cancelled
            task.cancel()


async def while_connected(request: web.Request, outputs: AsyncIterator[T]) -> AsyncIterator[T]:
    """`outputs` passed on as they come. A stream notices a client that left only when it
    writes, and before its first token it writes nothing for as long as a long prompt's prefill
    takes: so while the next item is awaited the connection is looked at, and if the client is
    gone `outputs` is closed (its engine jobs abort and free their blocks) and
    `ConnectionResetError` is raised, as the next write would."""
    try:
        while True:
            step = asyncio.ensure_future(anext(outputs))
            try:
                while not step.done():
                    await asyncio.wait({step}, timeout=POLL_S)
                    if not step.done() and _gone(request):
                        step.cancel()
                        await asyncio.gather(step, return_exceptions=True)
                        raise ConnectionResetError("the client closed the connection")
            finally:
                if not step.done():  # the handler itself was cancelled: stop the step first,
                    step.cancel()  # or closing `outputs` below would find it still running
                    await asyncio.gather(step, return_exceptions=True)
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(outputs, "aclose", None)
        if aclose is not None:
            await aclose()


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()
