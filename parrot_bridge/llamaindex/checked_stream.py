"""Streaming the last call of a recorded chain, once the chain is checked against the stock loop.

The synthesizers record a whole chain of calls before seeing any answer; when streaming, the
earlier answers are ready as soon as the last call starts. If they show the stock loop would
have made other calls, the stream is dropped and the stock loop's answer is streamed instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any

from parrot_bridge.session import Session


def checked_stream(
    session: Session,
    tokens: Generator[str, None, None],
    holds: Callable[[], bool],
    fallback: Callable[[], Any],
) -> Generator[str, None, None]:
    """`tokens` if `holds()` once the first token is asked for, else `fallback()`'s response
    (a string or a token generator); the session is closed either way."""
    try:
        first = next(tokens, None)  # submits the chain; earlier answers are ready now
        if not holds():
            tokens.close()
            session.close()
            response = fallback()
            yield from ([response] if isinstance(response, str) else response)
            return
        if first is not None:
            yield first
        yield from tokens
    finally:
        session.close()


async def achecked_stream(
    session: Session,
    tokens: AsyncGenerator[str, None],
    holds: Callable[[], Awaitable[bool]],
    fallback: Callable[[], Awaitable[Any]],
) -> AsyncGenerator[str, None]:
    """The async `checked_stream`."""
    try:
        first = await anext(tokens, None)
        if not await holds():
            await tokens.aclose()
            await session.aclose()
            response = await fallback()
            if isinstance(response, str):
                yield response
            else:
                async for token in response:
                    yield token
            return
        if first is not None:
            yield first
        async for token in tokens:
            yield token
    finally:
        await session.aclose()
