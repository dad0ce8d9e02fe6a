"""Work that stops when its client hangs up, or when shutdown's grace period is over.

aiohttp does not cancel a handler when its client disconnects (handler cancellation is off by
default, and on it would cancel every route mid-mutation), so a non-streamed completion would
generate to its end for nobody, holding its KV blocks. A streamed one notices at its next write.
At shutdown the same work is stopped once its grace period (`server.drain`) is over, and the
client is told why (a 503: its body, or a stream's error event) rather than left without an
answer when aiohttp cancels the handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web

from server.keys import DRAIN

T = TypeVar("T")
POLL_S = 0.2  # how often the connection is looked at; a step of work takes ~10-200 ms here


class ClientGone(Exception):
    """The client closed its connection before the response was ready."""


async def unless_disconnected(request: web.Request, work: Awaitable[T]) -> T:
    """The result of `work`; if the client disconnects first, `work` is cancelled (its engine
    jobs abort and free their blocks) and `ClientGone` is raised; if shutdown's grace period
    ends first, `work` is cancelled and the 503 of `Drain.error` raised (both are looked at
    every POLL_S)."""
    drain = request.app[DRAIN]
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if _gone(request):  # first: a client that left is logged as one (499)
                await _cancel(task)
                raise ClientGone()
            if drain.stopped:
                await _cancel(task)
                raise drain.error()
    finally:
        if not task.done():  # the handler itself was cancelled
            await _cancel(task)


async def while_connected(request: web.Request, outputs: AsyncIterator[T]) -> AsyncIterator[T]:
    """`outputs` passed on as they come. A stream notices a client that left only when it
    writes, and before its first token it writes nothing for as long as a long prompt's prefill
    takes: so while the next item is awaited the connection is looked at, and if the client is
    gone `outputs` is closed (its engine jobs abort and free their blocks) and
    `ConnectionResetError` is raised, as the next write would. Once shutdown's grace period is
    over a wait for an item that is not ready is cut: `outputs` is closed as well and the 503
    of `Drain.error` raised, for the stream to send as its error event (an item, or the end,
    that is ready is passed on first)."""
    drain = request.app[DRAIN]
    try:
        while True:
            step = asyncio.ensure_future(anext(outputs))
            try:
                # once the grace period is over only a wait is cut: an item, or the end, that is
                # ready (it ended while the previous item was written) still goes out, so a
                # stream that is done is not failed after its last item
                timeout = 0.0 if drain.stopped else POLL_S
                while True:
                    await asyncio.wait({step}, timeout=timeout)
                    if step.done():
                        break
                    timeout = POLL_S
                    if _gone(request):  # a client that left is told nothing (logged as such)
                        await _cancel(step)
                        raise ConnectionResetError("the client closed the connection")
                    if drain.stopped:
                        await _cancel(step)
                        raise drain.error()
            finally:
                if not step.done():  # the handler itself was cancelled: stop the step first,
                    await _cancel(step)  # or closing `outputs` below would find it running
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(outputs, "aclose", None)
        if aclose is not None:
            await aclose()


async def _cancel(work: asyncio.Future[T]) -> None:
    """Cancel `work` and wait for it to end; its exception (a gather's CancelledError too) is
    retrieved, so asyncio does not log it as never retrieved."""
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()
