"""A private event loop in a daemon thread, so one aiohttp client serves sync and async callers.

Sync code blocks on a coroutine run there; async code (on any loop) awaits it; async generators
running there are iterated from either side through a queue.

A forked process (multiprocessing's default start on Linux) has only the thread that forked:
it gets a loop of its own, and a `LoopThread` it inherited raises rather than wait for ever.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from parrot_bridge.errors import ParrotError

T = TypeVar("T")
_END = object()


class LoopThread:
    def __init__(self) -> None:
        self._pid = os.getpid()  # the process whose thread runs the loop
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
        self._check_process(coro)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C, say: the request must not go on without its caller
            future.cancel()
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro`, run on the private loop, from any other event loop."""
        self._check_process(coro)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate, from sync code, an async generator that runs on the private loop."""
        self._check_process()
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
        self._check_process()
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

    def _check_process(self, coro: Coroutine[Any, Any, Any] | None = None) -> None:
        """Refuse to wait in a forked child on a loop whose thread stayed in the parent."""
        if os.getpid() == self._pid:
            return
        if coro is not None:
            coro.close()
        raise ParrotError(
            f"the SDK's event loop runs in process {self._pid} that made it, not in this one "
            f"({os.getpid()}), forked from it: make sessions (and models) in the process that "
            "uses them"
        )


async def _pump(make: Callable[[], AsyncIterator[T]], put: Callable[[Any], None]) -> None:
    try:
        async for item in make():
            put(item)
    finally:
        put(_END)


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def _forget_in_child() -> None:
    """After a fork: the parent's loop thread is not here, and its lock may have been held."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def shared_loop() -> LoopThread:
    """The process's SDK loop, started on first use (in a forked child, anew)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoopThread()
        return _shared
