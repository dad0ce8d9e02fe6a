"""Shutdown's grace period for requests in flight.

On SIGINT/SIGTERM aiohttp closes the listener (new connections are refused) and runs the
application's shutdown hooks before it waits for handlers. `Drain.wait` is the last hook: it
gives the requests still running up to `--shutdown-timeout-s` to end, then declares the grace
period over (`stopped`), which the long-running paths (`server.api.disconnect`) turn into an
answer within their poll interval: a non-streamed request gets a 503, a stream an error event
and its end. It then waits a little (`ANSWER_S`) for those answers to go out; aiohttp cancels
what is left after that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from server.errors import ApiError, unavailable

ANSWER_S = 1.0  # how long the answers of cancelled requests get once the grace period is over


class Drain:
    """Counts the requests in flight (`tracked`) and ends their grace period (`wait`)."""

    def __init__(self) -> None:
        self.grace_s: float | None = None  # set once shutdown has begun
        # the grace period is over: work still running is to be cancelled (a flag, looked at
        # between a stream's items and every POLL_S, not a future every stream step waits on)
        self.stopped = False
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def error(self) -> ApiError:
        """The 503 that a request cancelled at the end of the grace period gets (a stream, its
        body in an error event)."""
        return unavailable(
            f"the server is shutting down: the request was cancelled after its grace period "
            f"of {self.grace_s or 0:g} s (--shutdown-timeout-s)",
            code="server_shutting_down",
        )

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        """Counts a request in flight while the block runs (`drain_middleware`)."""
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    @property
    def running(self) -> int:
        """Requests in flight."""
        return self._running

    async def wait(self, grace_s: float) -> int:
        """Let the requests in flight run for up to `grace_s`, then end the grace period and
        give their answers up to `ANSWER_S` to go out; returns how many were still running when
        the grace period ended. Timed with `asyncio.wait`, not by cancellation: aiohttp runs its
        shutdown in a task that has been cancelled."""
        self.grace_s = grace_s
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait({idle}, timeout=grace_s)
            cut = self._running
            self.stopped = True
            if not idle.done():
                await asyncio.wait({idle}, timeout=ANSWER_S)
        finally:
            idle.cancel()
        return cut
