"""Run jobs the way a user of an OpenAI client does today: one request per call, awaiting the
requests a call depends on and sending independent calls concurrently (asyncio)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from openai import AsyncOpenAI

from benchmarks.common.graph import Call, CallResult, Job, JobResult, Ref


async def run_openai_jobs(
    url: str,
    model: str,
    jobs: tuple[Job, ...],
    rtt_s: float = 0.0,
    on_done: Callable[[], None] = lambda: None,
) -> list[JobResult]:
    """Same contract as `run_parrot_jobs`, through `/v1/completions` (greedy, the calls'
    max_tokens; the criteria cannot be told to the server and are ignored)."""
    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    t0 = time.perf_counter()

    async def one(job: Job) -> JobResult:
        await asyncio.sleep(max(0.0, job.start_s - (time.perf_counter() - t0)))
        start = time.perf_counter() - t0
        tasks: dict[str, asyncio.Task[str]] = {}
        done: dict[str, CallResult] = {}

        async def send(call: Call) -> str:
            values = {}
            for key, value in call.inputs.items():
                values[key] = await tasks[value.call] if isinstance(value, Ref) else value
            await asyncio.sleep(rtt_s)
            resp = await client.completions.create(
                model=model, prompt=call.render(values), max_tokens=call.max_tokens, temperature=0
            )
            text = resp.choices[0].text
            usage = resp.usage
            done[call.name] = CallResult(text, usage.prompt_tokens if usage else 0,
                                         usage.completion_tokens if usage else 0)  # fmt: skip
            return text

        for call in job.calls:
            tasks[call.name] = asyncio.create_task(send(call))
        texts = await asyncio.gather(*(tasks[n] for n in job.awaited))
        end = time.perf_counter() - t0
        await asyncio.gather(*tasks.values())  # calls nothing awaits still count as work
        on_done()
        generated = sum(done[n].completion_tokens for n in job.awaited)
        return JobResult(job.name, job.app, start, end, dict(zip(job.awaited, texts, strict=True)),
                         job.output_tokens, generated, {c.name: done[c.name] for c in job.calls})

    try:
        return list(await asyncio.gather(*(one(j) for j in jobs)))
    finally:
        await client.close()
