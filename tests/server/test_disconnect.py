"""Work that stops when its client hangs up (`server.api.disconnect`), on a stand-in request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.api import disconnect
from server.api.disconnect import while_connected


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Request:
    def __init__(self) -> None:
        self.transport = _Transport()


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
