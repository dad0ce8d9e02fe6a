"""Latency histograms of plain requests, observed on their way through: time to the first token,
time per output token after it, and the whole request."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.engine import JobOutput
from server.metrics import Metrics


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """One prompt of a request (`api`: completions or chat) that arrived at `started`
    (`time.perf_counter()`); its `samples` are the `n` choices generated from it."""

    metrics: Metrics
    api: str
    started: float
    samples: int = 1

    async def observe(
        self, outputs: AsyncIterator[tuple[int, JobOutput]]
    ) -> AsyncIterator[tuple[int, JobOutput]]:
        """`outputs` passed on as they come. The first token of any sample is the request's
        first; the time per output token is each sample's own gap between outputs; the latency
        is observed once every sample finished (not for a request that failed or was left)."""
        last: dict[int, float] = {}  # sample -> when its last output with tokens came
        finished = 0
        async with contextlib.aclosing(outputs):  # type: ignore[type-var]
            async for index, out in outputs:
                now = time.perf_counter()
                if out.new_token_ids:
                    if not last:  # the request's first token
                        self.metrics.request_ttft.observe(now - self.started, api=self.api)
                    elif index in last:
                        gap = (now - last[index]) / len(out.new_token_ids)
                        self.metrics.request_tpot.observe(gap, api=self.api)
                    last[index] = now
                finished += out.finished
                yield index, out
        if finished == self.samples:
            self.metrics.request_latency.observe(time.perf_counter() - self.started, api=self.api)
