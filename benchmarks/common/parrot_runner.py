"""Run jobs through the Parrot SDK: each job is one session whose calls are recorded as
semantic-function calls, so the server sees the whole graph and the awaited criteria."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import parrot_bridge as P
from benchmarks.common.graph import CallResult, Job, JobResult, Ref
from parrot_bridge.transport import Transport


class DelayedTransport(Transport):
    """The SDK's HTTP client with `rtt_s` slept before every request it sends (session
    creation, graph submission, each variable read, session close), as the baseline runner
    sleeps before each of its requests: the simulated round trip is charged per request in
    every mode, however many requests a mode needs."""

    def __init__(self, base_url: str, rtt_s: float) -> None:
        super().__init__(base_url)
        self.rtt_s = rtt_s
        self.requests = 0

    async def request(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.requests += 1
        await asyncio.sleep(self.rtt_s)
        return await super().request(*args, **kwargs)

    async def events(self, *args: Any, **kwargs: Any) -> AsyncIterator[tuple[str, Any]]:
        self.requests += 1
        await asyncio.sleep(self.rtt_s)
        async for item in super().events(*args, **kwargs):
            yield item


async def run_parrot_jobs(
    url: str, jobs: tuple[Job, ...], rtt_s: float = 0.0, on_done: Callable[[], None] = lambda: None
) -> list[JobResult]:
    """Start each job at its `start_s` (from now) and return its result when all awaited
    outputs have arrived. `rtt_s` is added before each HTTP request the SDK sends (session
    creation, the graph submission, each read), as the baseline adds it before each of its."""
    t0 = time.perf_counter()

    async def one(job: Job) -> JobResult:
        await asyncio.sleep(max(0.0, job.start_s - (time.perf_counter() - t0)))
        start = time.perf_counter() - t0
        transport = DelayedTransport(url, rtt_s)
        async with P.Session(url, name=job.name, transport=transport) as session:
            outs: dict[str, P.SemanticVariable] = {}
            for call in job.calls:
                fn = P.SemanticFunction(
                    call.template, name=call.name, max_tokens=call.max_tokens, temperature=0
                )
                args = {k: outs[v.call] if isinstance(v, Ref) else v for k, v in call.inputs.items()}
                out = fn.invoke(session, **args)
                assert isinstance(out, P.SemanticVariable)
                outs[call.name] = out

            async def fetch(name: str) -> str:
                return await outs[name].aget(criteria=job.awaited[name])

            texts = await asyncio.gather(*(fetch(n) for n in job.awaited))
            end = time.perf_counter() - t0
            # every call's output and usage, untimed and without the simulated round trip (a
            # call that feeds no awaited one is waited for, as the baseline waits for it)
            transport.rtt_s = 0.0
            rest = [n for n in outs if n not in job.awaited]
            await asyncio.gather(*(outs[n].aget(criteria="throughput") for n in rest))
            calls = {n: _call_result(v) for n, v in outs.items()}
        on_done()
        generated = sum(calls[n].completion_tokens for n in job.awaited)
        return JobResult(job.name, job.app, start, end, dict(zip(job.awaited, texts, strict=True)),
                         job.output_tokens, generated, calls)

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def _call_result(var: P.SemanticVariable) -> CallResult:
    """A fetched output's text and the usage the native API returned with it."""
    usage = var.usage or {}
    return CallResult(var.value or "", usage.get("prompt_tokens", 0),
                      usage.get("completion_tokens", 0))  # fmt: skip
