"""The live text of one variable: chunks as they are generated, then its end (value or error)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class VariableFeed:
    """Any number of followers read the chunks from the start; waiters wait for the end."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        # a chunk has gone to a follower (a follower waiting for the first has seen nothing:
        # the output can still be generated again, see `restart`)
        self.followed = False
        self.error: str | None = None
        self.done = asyncio.Event()
        self._changed = asyncio.Event()

    def push(self, text: str) -> None:
        if text and not self.done.is_set():
            self.chunks.append(text)
            self._wake()

    def restart(self) -> None:
        """Forget the chunks (the output is generated again); only while nobody read them."""
        if self.followed:
            raise RuntimeError("the chunks were read: they cannot be taken back")
        self.chunks = []

    def finish(self, value: str | None = None, error: str | None = None) -> None:
        """End the feed. A final `value` longer than the chunks so far is completed by a chunk."""
        if self.done.is_set():
            return
        if value is not None:
            so_far = "".join(self.chunks)
            if value.startswith(so_far) and len(value) > len(so_far):
                self.chunks.append(value[len(so_far) :])
            elif not value.startswith(so_far):
                # chunks and value disagree (should not happen): the value wins
                self.chunks = [value]
        self.error = error
        self.done.set()
        self._wake()

    async def follow(self) -> AsyncIterator[str]:
        """Yield every chunk from the first; return at the end (the caller checks `error`)."""
        i = 0
        while True:
            changed = self._changed
            while i < len(self.chunks):
                self.followed = True
                yield self.chunks[i]
                i += 1
            if self.done.is_set():
                return
            await changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
