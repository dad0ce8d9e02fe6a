"""A private event loop in a daemon thread, so one aiohttp client serves sync and async callers.

Sync code blocks on a coroutine run there; async code (on any loop) awaits it; async generators
running there are iterated from either side through a queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from parrot_bridge.errors import ParrotError

T = TypeVar("T")
_END = object()


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="parrot-sdk", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the private loop and block until it returns."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise ParrotError("blocking SDK call made from the SDK's own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C, say: the request must not go on without its caller
            future.cancel()
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro`, run on the private loop, from any other event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate, from sync code, an async generator that runs on the private loop."""
        items: queue.Queue[Any] = queue.Queue()
        future = asyncio.run_coroutine_threadsafe(_pump(make, items.put), self.loop)
        try:
            while (item := items.get()) is not _END:
                yield item
            future.result()  # raises what the generator raised
        finally:
            future.cancel()

    async def aiterate(self, make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Iterate, from async code on another loop, an async generator on the private loop."""
        caller = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            caller.call_soon_threadsafe(items.put_nowait, item)

        future = asyncio.run_coroutine_threadsafe(_pump(make, put), self.loop)
        try:
            while (item := await items.get()) is not _END:
                yield item
            await asyncio.wrap_future(future)
        finally:
            future.cancel()


async def _pump(make: Callable[[], AsyncIterator[T]], put: Callable[[Any], None]) -> None:
    try:
        async for item in make():
            put(item)
    finally:
        put(_END)


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process's SDK loop, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoopThread()
        return _shared
