"""A job's outputs read from its queue: the in-process engine's and an engine process's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.engine.engine_error import EngineError
from server.engine.outputs import JobOutput


async def job_outputs(
    outputs: asyncio.Queue[JobOutput | BaseException],
) -> AsyncIterator[JobOutput]:
    """A job's outputs as they are queued, up to its finished one; an exception queued, or an
    output that carries an error, is raised (`EngineError` for the latter)."""
    while True:
        item = await outputs.get()
        if isinstance(item, BaseException):
            raise item
        if item.error:
            raise EngineError(item.error)
        yield item
        if item.finished:
            return
