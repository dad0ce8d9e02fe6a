"""Calls recorded in one turn of an event loop, sent to the server as one graph.

`asyncio.gather(llm.apredict(...), ...)` starts every coroutine before any of them waits: each
records its call, yields once, and the first read then submits all of them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from parrot_bridge.session import Session
from parrot_bridge.variable import SemanticVariable


class CallBatch:
    """One session for the calls of one turn; closed on the server when the last is read."""

    def __init__(
        self, session: Session, loop: asyncio.AbstractEventLoop, timeout: float | None = None
    ) -> None:
        self.session = session
        self.loop = loop
        self.timeout = timeout  # seconds a read may wait for its value
        self.closed = False  # no more calls join once a read has started
        self._unread = 0
        self._opening: asyncio.Task[Session] | None = None

    def add(self, record: Callable[[Session], SemanticVariable]) -> SemanticVariable:
        """Record a call (by `record(session)`) and count it as unread."""
        var = record(self.session)
        self._unread += 1
        return var

    async def read(self, var: SemanticVariable) -> str:
        try:
            await asyncio.sleep(0)  # siblings started in this turn record their calls now
            self.closed = True
            if self._opening is None:
                # one opening for all readers: concurrent first reads would each open a session
                self._opening = asyncio.ensure_future(self.session.aopen())
            await asyncio.shield(self._opening)
            return await var.aget(timeout=self.timeout)
        finally:
            self._unread -= 1
            if self._unread == 0:
                await self.session.aclose()
