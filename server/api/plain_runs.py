"""Plain requests on the engines: one prompt's samples run to their end (redone once if the
engine dies before the client saw anything), or streamed as they come, with their latencies
observed and the engines' failures turned into API errors."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from server.api.disconnect import while_connected
from server.api.openai_inputs import Placement
from server.api.openai_models import OpenAIRequest
from server.api.request_timing import RequestTiming
from server.api.sse import EventStream
from server.engine import EngineError, JobOutput, SamplingParams, TokenLogprob
from server.engine_pool import REDO_WAIT_S, EnginePool, EngineUnavailable
from server.engine_process import EngineDied
from server.errors import ApiError, bad_request, error_body, unavailable
from server.keys import ENGINES
from server.stream_merge import merge_streams

# sends a stream's error event: (message, OpenAI's error type, its code: None for the
# caller's own)
Failure = Callable[[str, str, str | None], Awaitable[None]]


async def run_plain(
    engines: EnginePool,
    ids: list[int],
    samplings: list[SamplingParams],
    timing: RequestTiming,
    placement: Placement,
) -> list[tuple[JobOutput, list[TokenLogprob]]]:
    """The finished output of each sample (with the prompt's logprobs, if asked) and its
    tokens' logprobs (if asked), in order (see `_generate`). The client sees nothing before
    the end, so if the engine dies mid-generation the request runs again, once, from the
    start on an engine that runs."""
    try:
        try:
            return await _collect(engines, ids, samplings, timing, placement)
        except EngineDied:
            await engines.until_available(REDO_WAIT_S)
        try:
            return await _collect(engines, ids, samplings, timing, placement)
        except EngineDied as exc:
            raise engines.redo_died(exc) from exc
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    except EngineUnavailable as exc:
        raise unavailable(str(exc)) from exc
    except EngineError as exc:
        raise ApiError(500, str(exc), type="server_error") from exc


async def stream_outputs(
    stream: EventStream,
    engines: EnginePool,
    prompt_ids: list[list[int]],
    per_prompt: list[list[SamplingParams]],
    timing: RequestTiming,
    placement: Placement,
    failed: Failure | None = None,
) -> AsyncIterator[tuple[int, JobOutput]]:
    """(choice index: prompt k's sample i is k * n + i, engine output) of the prompts'
    samples, as they come; an engine error after the stream started, or the end of shutdown's
    grace period, is sent as an error event (`failed(message, type, code)` sends it, when
    given), and the stream then ends, as the source's end would. Only a stream with a choice
    left unfinished is failed: an error once every choice has its last output (the end of the
    source, awaited after it, came too late) is not sent, so a caller that finishes a stream
    only once all its choices finished (its usage chunk, a Responses' completion) never does
    so after an error event. A client that leaves while nothing is written (a long prefill)
    ends it with `ConnectionResetError`, its engine jobs aborted (`while_connected`)."""
    n = len(per_prompt[0])
    runs = [
        _generate(engines, ids, s, timing, placement)
        for ids, s in zip(prompt_ids, per_prompt, strict=True)
    ]
    request = stream.request
    unfinished = n * len(runs)
    try:
        if len(runs) == 1:
            watched = while_connected(request, runs[0])
            async with contextlib.aclosing(watched) as outputs:  # type: ignore[type-var]
                async for item in outputs:
                    unfinished -= item[1].finished
                    yield item
        else:
            merged = while_connected(request, merge_streams(runs))  # type: ignore[arg-type]
            async with contextlib.aclosing(merged):  # type: ignore[type-var]
                async for k, (i, out) in merged:
                    unfinished -= out.finished
                    yield k * n + i, out
    except (ValueError, EngineError, ApiError) as exc:
        if unfinished == 0:  # every answer is out whole: nothing failed for the client
            return
        # what the engine refused is the request's fault; an engine that failed (died) under
        # it is the server's, as a non-streamed request's 500 says, and so is a shutdown whose
        # grace period ended (`while_connected`: a 503's body, with its code)
        if isinstance(exc, ApiError):
            kind, code, message = exc.type, exc.code, exc.message
        else:
            kind = "invalid_request_error" if isinstance(exc, ValueError) else "server_error"
            code, message = None, str(exc)
        if failed is not None:
            await failed(message, kind, code)
        else:
            await stream.send(error_body(message, kind, code))


def require_engine(request: web.Request) -> None:
    """503 while no engine runs and one is being restarted; checked once the request is
    known to be valid (a bad request is a 400 whatever the engines' state)."""
    reason = request.app[ENGINES].unavailable()
    if reason is not None:
        raise unavailable(reason)


async def _collect(
    engines: EnginePool,
    ids: list[int],
    samplings: list[SamplingParams],
    timing: RequestTiming,
    placement: Placement,
) -> list[tuple[JobOutput, list[TokenLogprob]]]:
    """One run of `run_plain`'s request, to its end (`run_plain` redoes it, not the pool)."""
    finals: list[JobOutput | None] = [None] * len(samplings)
    logprobs: list[list[TokenLogprob]] = [[] for _ in samplings]
    prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
    outputs = _generate(engines, ids, samplings, timing, placement, redo=False)
    # closed at once when cancelled (the client left): that aborts the engine jobs
    async with contextlib.aclosing(outputs):  # type: ignore[type-var]
        async for index, out in outputs:
            finals[index] = out
            logprobs[index].extend(out.new_logprobs)
            if out.prompt_logprobs is not None:
                prompt_logprobs[index] = out.prompt_logprobs
    assert all(f is not None and f.finished for f in finals)
    for index, scores in prompt_logprobs.items():  # they came with an earlier output
        finals[index].prompt_logprobs = scores  # type: ignore[union-attr]
    return list(zip(finals, logprobs, strict=True))  # type: ignore[arg-type]


def _generate(
    engines: EnginePool,
    ids: list[int],
    samplings: list[SamplingParams],
    timing: RequestTiming,
    placement: Placement,
    redo: bool = True,
) -> AsyncIterator[tuple[int, JobOutput]]:
    """A plain request on the least loaded engine, as `placement` says (its class: normal
    unless the client said otherwise; latency-critical graph calls go first, bulk graph work
    after): one sample through the prefix cache (shared within its salt), or several (`n`)
    forking one computed prompt; its latencies go to `timing`'s histograms."""
    priority, salt = placement.priority, placement.cache_salt
    if len(samplings) > 1:
        outputs = engines.generate_samples(ids, samplings, priority, redo=redo, cache_salt=salt)
    else:
        outputs = _indexed(
            engines.generate_plain(ids, samplings[0], priority, redo=redo, cache_salt=salt)
        )
    return dataclasses.replace(timing, samples=len(samplings)).observe(outputs)


async def _indexed(outputs: AsyncIterator[JobOutput]) -> AsyncIterator[tuple[int, JobOutput]]:
    async with contextlib.aclosing(outputs):  # type: ignore[type-var]
        async for out in outputs:
            yield 0, out
def stop_reason(out: JobOutput, body: OpenAIRequest) -> int | str | None:
    """vLLM's stop_reason: the stop string or stop token id of `body` that ended `out`; None
    for EOS, a length cut, or a stop the server added (a tool call's closing tag)."""
    reason = out.stop_reason
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    asked = stops if isinstance(reason, str) else body.stop_token_ids or []
    return reason if reason in asked else None


def finish_reason(out: JobOutput, called: bool = False) -> str:
    """OpenAI's finish_reason; a call cut short by max_tokens is still "length"."""
    if out.finish_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"
