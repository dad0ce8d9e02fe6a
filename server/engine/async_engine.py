"""An asyncio front for `LLMEngine`: the step loop runs in its own thread.

Every call from the event loop becomes a command on a queue that the engine thread applies
between steps, so the engine itself needs no locks and the event loop never waits for a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import torch

from server.engine.cache_salt import check_cache_salt
from server.engine.engine_error import EngineError
from server.engine.job_outputs import job_outputs
from server.engine.llm_engine import LLMEngine
from server.engine.outputs import EngineStats, JobOutput
from server.engine.sampling_params import SamplingParams
from server.engine.step_loop import Command, apply_all, run_step_loop


class AsyncLLMEngine:
    """Context primitives as coroutines and async iterators over a threaded step loop."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._listeners: dict[int, Callable[[JobOutput], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lengths: dict[int, int] = {}
        # while held (`hold`), posts wait here and go as one command at `release`
        self._holds = 0
        self._held: list[Callable[[], Any]] = []
        self._held_pause = False

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV pool holds."""
        return self.engine.blocks.num_blocks * self.engine.config.block_size

    @property
    def latency_priority(self) -> int:
        return self.engine.config.latency_priority

    @property
    def threads(self) -> int:
        """Its compute threads: torch's, which all engines in this process share."""
        return torch.get_num_threads()

    @property
    def alive(self) -> bool:
        """Always: an engine in this process lives as long as the server."""
        return True

    async def stats(self) -> EngineStats:
        """A consistent copy of the engine's counters, read on its own thread."""
        return await self.call(lambda e: dataclasses.replace(e.stats))

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="parrot-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the step loop: jobs still running end with `EngineError`, and work posted
        from now on is refused with it."""
        if self._thread is None:
            return
        self._holds = 0
        self._flush()  # what was posted before the stop is applied first
        self._stopping = True
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def hold(self) -> None:
        """Keep what is posted from now on until `release`, then apply it as one command, so
        that the step loop runs no step between two of those posts: the calls of a task
        group, started together, then join the same step. Holds nest."""
        self._holds += 1

    def release(self) -> None:
        """End a `hold`; at the outermost, post what it kept (and ask for a pause, if any of
        it was latency-critical)."""
        self._holds -= 1
        if self._holds == 0:
            self._flush()

    def _flush(self) -> None:
        """Post what a hold kept, as one command."""
        if not self._held:
            return
        commands, self._held = self._held, []
        pause, self._held_pause = self._held_pause, False
        self._commands.put(functools.partial(apply_all, commands))
        if pause:
            self._ask_pause()

    # ---- context primitives -----------------------------------------------------------
    def create_context(self, parent: int | None = None, cache_salt: str | None = None) -> int:
        """See `LLMEngine.create_context` (a bad `cache_salt` raises here, not in the loop)."""
        check_cache_salt(cache_salt, parent)
        ctx_id = self.engine.new_context_id()
        self._lengths[ctx_id] = self._lengths.get(parent, 0) if parent is not None else 0
        self._post(lambda: self.engine.create_context(parent, ctx_id, cache_salt))
        return ctx_id

    async def fill(
        self,
        context_id: int,
        token_ids: Sequence[int],
        priority: int = 0,
        yield_tokens: int | None = None,
    ) -> int:
        """Append tokens and return, once their KV is computed, how many of the context's
        tokens its first step found computed (`Job.cached_tokens`; `yield_tokens`: see
        `LLMEngine.fill`)."""
        tokens = list(token_ids)
        self._grow(context_id, len(tokens))
        submit = lambda: self.engine.fill(context_id, tokens, priority, yield_tokens)  # noqa: E731
        # a fill ahead of need (yield_tokens) is not worth pausing a step for
        job = self._job(submit, self._urgent(priority) and yield_tokens is None)
        cached = 0
        async with contextlib.aclosing(job):  # cancelled: the job is aborted at once
            async for out in job:
                cached = out.cached_tokens if out.cached_tokens is not None else cached
        return cached

    async def generate(
        self,
        context_id: int,
        sampling: SamplingParams,
        priority: int = 0,
        fill_token_ids: Sequence[int] | None = None,
        hold_latency_s: float = 0.0,
    ) -> AsyncIterator[JobOutput]:
        """Sample onto the context, yielding progress; leaving early aborts the job.

        With `fill_token_ids`, those tokens are appended first and the generation samples from
        the same forward pass that computes them (no token computed twice). `hold_latency_s`:
        see `LLMEngine.add_generate`.
        """
        tokens = list(fill_token_ids or ())
        self._grow(context_id, len(tokens))

        def submit() -> int:
            if tokens:
                self.engine.fill(context_id, tokens, priority)
            return self.engine.add_generate(
                context_id, sampling, priority, hold_latency_s=hold_latency_s
            )

        job = self._job(submit, self._urgent(priority))
        async with contextlib.aclosing(job):  # closed with this one: the job is aborted at once
            async for out in job:
                self._grow(context_id, len(out.new_token_ids))
                yield out

    async def generate_request(
        self,
        prompt_token_ids: Sequence[int],
        sampling: SamplingParams,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[JobOutput]:
        """A plain request (fresh context, prefix cache applies: within its `cache_salt`),
        freed when it ends."""
        tokens = list(prompt_token_ids)

        def submit() -> int:
            return self.engine.add_request(tokens, sampling, priority, cache_salt)

        job = self._job(submit, self._urgent(priority))
        async with contextlib.aclosing(job):  # closed with this one: the job is aborted at once
            async for out in job:
                yield out

    def boost(self, context_id: int, priority: int) -> None:
        """See `LLMEngine.boost`; boosted to latency-critical, the fills ask the step in flight
        to pause for them."""
        self._post(lambda: self.engine.boost(context_id, priority))
        if self._urgent(priority):
            self._ask_pause()

    def truncate(self, context_id: int, num_tokens: int) -> None:
        if context_id in self._lengths:
            self._lengths[context_id] = min(self._lengths[context_id], num_tokens)
        self._post(lambda: self.engine.truncate(context_id, num_tokens))

    def free(self, context_id: int) -> None:
        self._lengths.pop(context_id, None)
        if not self._stopping:  # a stopped engine holds nothing for anyone any more
            self._post(lambda: self.engine.free(context_id))

    def _grow(self, context_id: int, num_tokens: int) -> None:
        """Count tokens a live context gains; a freed one is not brought back (its last
        outputs, or work a racing caller posts for it, find it gone)."""
        if context_id in self._lengths:
            self._lengths[context_id] += num_tokens

    def context_len(self, context_id: int) -> int:
        """Tokens the context will hold once the commands sent so far are applied."""
        return self._lengths.get(context_id, 0)

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run `fn(engine)` on the engine thread between steps and return its result."""
        assert self._loop is not None, "start() the engine first"
        fut: asyncio.Future[Any] = self._loop.create_future()

        def command() -> None:
            try:
                result = fn(self.engine)
            except Exception as exc:  # handed to the caller
                self._loop.call_soon_threadsafe(_set_exception, fut, exc)
            else:
                self._loop.call_soon_threadsafe(_set_result, fut, result)

        self._post(command)
        return await fut

    # ---- internals --------------------------------------------------------------------
    def _urgent(self, priority: int) -> bool:
        return priority <= self.latency_priority

    async def _job(self, submit: Callable[[], int], urgent: bool = False) -> AsyncIterator[JobOutput]:
        """Post `submit` and yield the job's outputs; `urgent` (latency-critical) work asks the
        step in flight to pause for it (`LLMEngine.request_pause`)."""
        assert self._loop is not None, "start() the engine first"
        outputs: asyncio.Queue[JobOutput | BaseException] = asyncio.Queue()
        loop = self._loop
        job_id: list[int] = []

        def deliver(out: JobOutput) -> None:
            loop.call_soon_threadsafe(outputs.put_nowait, out)

        def command() -> None:
            try:
                jid = submit()
            except Exception as exc:
                loop.call_soon_threadsafe(outputs.put_nowait, exc)
                return
            job_id.append(jid)
            self._listeners[jid] = deliver

        self._post(command)
        if urgent:
            self._ask_pause()
        finished = False
        try:
            async for item in job_outputs(outputs):
                finished = item.finished
                yield item
        finally:
            if not finished and not self._stopping:
                self._post(lambda: job_id and self.engine.abort(job_id[0]))

    def _post(self, command: Callable[[], Any]) -> None:
        if self._stopping:
            raise EngineError("the engine is stopped")
        if self._holds:
            self._held.append(command)
        else:
            self._commands.put(command)

    def _ask_pause(self) -> None:
        """Ask the step in flight to pause for latency-critical work just posted."""
        if self._holds:
            self._held_pause = True
        else:
            self.engine.request_pause()  # after the post: the loop clears it before it reads

    def _deliver(self, outputs: list[JobOutput]) -> None:
        for out in outputs:
            listener = self._listeners.get(out.job_id)
            if listener is not None:
                listener(out)
                if out.finished:
                    del self._listeners[out.job_id]

    def _run(self) -> None:
        run_step_loop(self.engine, self._commands, self._deliver)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        if not fut.done():
            fut.set_exception(exc)
