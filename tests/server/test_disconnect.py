"""Work that stops when its client hangs up or shutdown's grace period ends
(`server.api.disconnect`, `server.drain`), on a stand-in request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.api import disconnect
from server.api.disconnect import unless_disconnected, while_connected
from server.drain import Drain
from server.errors import ApiError
from server.keys import DRAIN


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Request:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.app = {DRAIN: Drain()}


def test_a_stream_waiting_for_its_first_output_stops_when_its_client_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A streamed request writes nothing while its prompt is prefilled: a client that hangs up
    then is noticed anyway, and the engine work behind the stream is closed (aborted) at once,
    not when the prefill is over."""
    monkeypatch.setattr(disconnect, "POLL_S", 0.01)
    closed = asyncio.Event()

    async def prefill_forever() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.sleep(3600)  # a long prefill: no output for now
            yield 2
        finally:
            closed.set()

    async def main() -> list[Any]:
        request = _Request()
        got: list[Any] = []

        async def read() -> None:
            async for item in while_connected(request, prefill_forever()):  # type: ignore[arg-type]
                got.append(item)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        assert got == [1] and not closed.is_set()
        request.transport.closing = True
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader, 2)
        assert closed.is_set()
        return got

    assert asyncio.run(main()) == [1]


def test_a_connected_stream_passes_everything_on_and_closes_its_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(3):
                await asyncio.sleep(0)
                yield i
        finally:
            closed.set()

    async def main() -> list[int]:
        out = [i async for i in while_connected(_Request(), source())]  # type: ignore[arg-type]
        assert closed.is_set()
        return out

    assert asyncio.run(main()) == [0, 1, 2]


def test_the_end_of_the_grace_period_stops_streams_and_plain_work_with_a_503() -> None:
    """Shutdown: the requests in flight run on through the grace period; once it is over a
    stream's source is closed (its engine jobs abort) and a 503 raised for its error event,
    and non-streamed work is cancelled with the same 503. A request that ends within the
    grace period is not touched, and the wait ends as soon as none is left."""
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield 1
        finally:
            closed.set()

    async def main() -> None:
        request = _Request()
        drain = request.app[DRAIN]

        async def tracked(work: Any) -> Any:
            with drain.tracked():
                return await work

        async def read() -> int:
            items = while_connected(request, endless())  # type: ignore[arg-type]
            return len([i async for i in items])

        def plain(work: Any) -> asyncio.Task[Any]:
            waited = unless_disconnected(request, work)  # type: ignore[arg-type]
            return asyncio.create_task(tracked(waited))

        stream = asyncio.create_task(tracked(read()))
        long, short = plain(asyncio.sleep(3600)), plain(asyncio.sleep(0.05, 7))
        await asyncio.sleep(0.01)
        assert drain.running == 3
        cut = await drain.wait(0.2)
        assert cut == 2 and drain.running == 0 and closed.is_set()
        assert await short == 7
        for task in (stream, long):
            with pytest.raises(ApiError) as info:
                await task
            assert info.value.status == 503 and info.value.code == "server_shutting_down"
            assert "grace period of 0.2 s" in info.value.message
        quick = Drain()
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await quick.wait(5) == 0 and loop.time() - start < 0.1  # nothing in flight

    asyncio.run(main())


def test_a_cancelled_handler_leaves_no_unretrieved_gather_behind() -> None:
    """A handler cancelled while it waits on gathered work (aiohttp cancels what is left at
    the end of shutdown) cancels that work and retrieves its CancelledError, which asyncio
    would otherwise log as "_GatheringFuture exception was never retrieved"."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        work = asyncio.gather(asyncio.sleep(3600), asyncio.sleep(3600))
        handler = asyncio.create_task(unless_disconnected(_Request(), work))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        assert work.done()
        del work, handler

    asyncio.run(main())
    import gc

    gc.collect()
    assert errors == []
