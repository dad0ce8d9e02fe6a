"""Run jobs through the Parrot SDK: each job is one session whose calls are recorded as
semantic-function calls, so the server sees the whole graph and the awaited criteria."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import parrot_bridge as P
from benchmarks.common.graph import Job, JobResult, Ref


async def run_parrot_jobs(
    url: str, jobs: tuple[Job, ...], rtt_s: float = 0.0, on_done: Callable[[], None] = lambda: None
) -> list[JobResult]:
    """Start each job at its `start_s` (from now) and return its result when all awaited
    outputs have arrived. `rtt_s` is added before each request the client sends."""
    t0 = time.perf_counter()

    async def one(job: Job) -> JobResult:
        await asyncio.sleep(max(0.0, job.start_s - (time.perf_counter() - t0)))
        start = time.perf_counter() - t0
        await asyncio.sleep(rtt_s)  # session creation
        async with P.Session(url, name=job.name) as session:
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
                await asyncio.sleep(rtt_s)
                return await outs[name].aget(criteria=job.awaited[name])

            texts = await asyncio.gather(*(fetch(n) for n in job.awaited))
            end = time.perf_counter() - t0
        on_done()
        return JobResult(job.name, job.app, start, end, dict(zip(job.awaited, texts, strict=True)),
                         job.output_tokens)

    return list(await asyncio.gather(*(one(j) for j in jobs)))
