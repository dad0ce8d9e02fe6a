"""merge_streams: items of several async generators as they come; errors and early exits close
every stream (the engine jobs behind them are aborted that way)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from server.stream_merge import merge_streams


async def counting(name: str, n: int, delay: float, closed: list[str]) -> AsyncGenerator[str, None]:
    try:
        for i in range(n):
            await asyncio.sleep(delay)
            yield f"{name}{i}"
    finally:
        closed.append(name)


async def failing(after: int, closed: list[str]) -> AsyncGenerator[str, None]:
    try:
        for i in range(after):
            yield f"f{i}"
        raise ValueError("sample failed")
    finally:
        closed.append("f")


def test_items_arrive_interleaved_with_their_stream_index() -> None:
    async def main() -> list[tuple[int, str]]:
        closed: list[str] = []
        streams = [counting("a", 3, 0.01, closed), counting("b", 2, 0.015, closed)]
        got = [item async for item in merge_streams(streams)]
        assert sorted(closed) == ["a", "b"]
        return got

    got = asyncio.run(main())
    assert [x for i, x in got if i == 0] == ["a0", "a1", "a2"]
    assert [x for i, x in got if i == 1] == ["b0", "b1"]
    assert got[0] == (0, "a0") and got[1] == (1, "b0")  # interleaved, not one after the other


def test_an_error_in_one_stream_closes_the_others() -> None:
    async def main() -> list[str]:
        closed: list[str] = []
        merged = merge_streams([counting("a", 100, 0.01, closed), failing(1, closed)])
        with pytest.raises(ValueError, match="sample failed"):
            async for _ in merged:
                pass
        return closed

    assert sorted(asyncio.run(main())) == ["a", "f"]


def test_leaving_early_closes_every_stream() -> None:
    async def main() -> list[str]:
        closed: list[str] = []
        merged = merge_streams([counting("a", 100, 0.01, closed), counting("b", 100, 0.01, closed)])
        async for index, _ in merged:
            if index == 1:
                break
        await merged.aclose()
        return closed

    assert sorted(asyncio.run(main())) == ["a", "b"]
