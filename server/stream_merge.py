"""Several async iterators read at once, their items interleaved as they come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def merge_streams(
    streams: Sequence[AsyncGenerator[T, None]],
    started: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[int, T]]:
    """(index of the stream, item) as items arrive from any of `streams`. An error in one
    stream ends the merge with that error; leaving early (or an error) closes every stream, so
    the engine jobs behind them are aborted. `started` is awaited once the streams are set
    going, before any has run (`EngineDriver.together`: their first posts reach the engine as
    one command)."""
    queue: asyncio.Queue[tuple[int, T | None, BaseException | None, bool]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for item in stream:
                    queue.put_nowait((index, item, None, False))
        except Exception as exc:  # handed to the reader, which raises it
            queue.put_nowait((index, None, exc, False))
            return
        queue.put_nowait((index, None, None, True))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        if started is not None:
            await started()
        left = len(tasks)
        while left:
            index, item, error, ended = await queue.get()
            if error is not None:
                raise error
            if ended:
                left -= 1
                continue
            yield index, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
