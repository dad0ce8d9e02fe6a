"""Runs ready calls on an engine, server-side: each output that completes releases its consumers.

A call is lowered to context primitives: fill the rendered text before an output (tokenized as
a whole), generate the output, append the following text, generate the next. Calls that become
ready together and share a leading run of prompt tokens fork one context holding it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from server.engine import EngineError, SamplingParams
from server.engine_driver import EngineDriver, TokenContext
from server.graph import Call, CallState
from server.log import log_event
from server.lowering import GenerateStep, lower_call
from server.metrics import Metrics
from server.prefix_plan import plan_shared_prefixes
from server.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    enable_prefix_sharing: bool = True
    min_shared_prefix_tokens: int = 16

    def __post_init__(self) -> None:
        if self.min_shared_prefix_tokens < 1:
            raise ValueError(
                f"min_shared_prefix_tokens must be >= 1, got {self.min_shared_prefix_tokens}"
            )


@dataclass(slots=True)
class _Job:
    call: Call
    steps: list[GenerateStep]
    prompt: list[int]  # tokens of the text before the first output


class Executor:
    """Turns ready calls into engine work and feeds results back into their session."""

    def __init__(self, driver: EngineDriver, metrics: Metrics, config: ExecutorConfig) -> None:
        self.driver = driver
        self.metrics = metrics
        self.config = config
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}

    def dispatch(self, session: Session, calls: list[Call]) -> None:
        """Start `calls` (all READY) of `session` now, as one batch."""
        if not calls or session.closed:
            return
        task = asyncio.create_task(self._run_batch(session, calls), name=f"calls-{session.id}")
        tasks = self._tasks.setdefault(session.id, set())
        tasks.add(task)
        task.add_done_callback(lambda t: self._forget(session.id, t))

    async def cancel_session(self, session_id: str) -> None:
        """Stop a session's running calls and free their contexts."""
        tasks = list(self._tasks.pop(session_id, ()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for session_id in list(self._tasks):
            await self.cancel_session(session_id)

    # -- one batch -----------------------------------------------------------------------------

    async def _run_batch(self, session: Session, calls: list[Call]) -> None:
        jobs: list[_Job] = []
        for call in calls:
            if call.state is not CallState.READY:  # e.g. its session closed meanwhile
                continue
            session.graph.start(call.id)
            try:
                steps = lower_call(call, session.graph.input_values(call))
                prompt = self.driver.encode(steps[0].text_before)
                self._check_fits(call, prompt)
            except CallError as exc:
                self._fail(session, call, str(exc))
                continue
            jobs.append(_Job(call, steps, prompt))
        contexts: list[TokenContext] = []
        try:
            await self._open_contexts(session, jobs, contexts)
            await asyncio.gather(
                *(
                    self._run_call(session, job, ctx)
                    for job, ctx in zip(jobs, contexts, strict=True)
                )
            )
        finally:
            # also when cancelled before a call's own cleanup could run
            for ctx in contexts:
                ctx.close()

    async def _open_contexts(
        self, session: Session, jobs: list[_Job], contexts: list[TokenContext]
    ) -> None:
        """Append to `contexts` one per job: a fork of a parent holding a shared token prefix,
        or a fresh context."""
        forks: dict[int, TokenContext] = {}
        try:
            if self.config.enable_prefix_sharing and len(jobs) > 1:
                await self._fork_shared_prefixes(session, [job.prompt for job in jobs], forks)
        except BaseException:
            contexts.extend(forks.values())  # the caller frees them
            raise
        contexts.extend(forks.get(i) or self.driver.new_context() for i in range(len(jobs)))

    async def _fork_shared_prefixes(
        self, session: Session, prompts: list[list[int]], forks: dict[int, TokenContext]
    ) -> None:
        for group in plan_shared_prefixes(prompts, self.config.min_shared_prefix_tokens):
            parent = self.driver.new_context()
            try:
                await parent.fill_to(prompts[group.members[0]][: group.num_tokens])
                forks.update((i, parent.fork()) for i in group.members)
            except (ValueError, EngineError) as exc:  # the members then fill on their own
                log_event(log, "shared_prefix_failed", logging.WARNING, session=session.id,
                          error=str(exc))  # fmt: skip
                continue
            finally:
                parent.close()  # the forks keep the shared blocks alive
            self.metrics.fork_cached_tokens.inc((len(group.members) - 1) * group.num_tokens)

    async def _run_call(self, session: Session, job: _Job, ctx: TokenContext) -> None:
        call = job.call
        try:
            text = ""
            for i, step in enumerate(job.steps):
                text += step.text_before
                target = job.prompt if i == 0 else self.driver.encode(text)
                self._check_fits(call, target)
                filled = await ctx.fill_to(target)
                self.metrics.prompt_tokens.inc(len(target) if i == 0 else filled.filled)
                value = await self._generate(session, call, step, ctx)
                text += value
                ready = session.complete_output(call.id, step.output, value)
                self.dispatch(session, ready)
            self.metrics.calls.inc(status="done")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine error fails this call and what depends on it
            if not isinstance(exc, CallError | ValueError | EngineError):
                log.exception("unexpected error in call %s of session %s", call.id, session.id)
            self._fail(session, call, str(exc) or type(exc).__name__)
        finally:
            ctx.close()

    async def _generate(
        self, session: Session, call: Call, step: GenerateStep, ctx: TokenContext
    ) -> str:
        s = call.sampling
        sampling = SamplingParams(
            max_tokens=min(s.max_tokens, self.driver.max_model_len - len(ctx.tokens)),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stop=list(step.stop),
            ignore_eos=s.ignore_eos,
        )
        var_id = call.outputs[step.output]
        text = ""
        async for out in ctx.generate(sampling):
            session.push_chunk(var_id, out.new_text)
            text = out.text
        return text

    def _check_fits(self, call: Call, prompt: list[int]) -> None:
        limit = self.driver.max_model_len
        if len(prompt) >= limit:
            raise CallError(
                f"its prompt has {len(prompt)} tokens, which leaves no room to generate in the "
                f"model's context of {limit} tokens"
            )
        if not prompt:
            raise CallError("its prompt before the first output is empty; nothing to generate from")

    def _fail(self, session: Session, call: Call, reason: str) -> None:
        if call.state is CallState.FAILED:
            return
        self.metrics.calls.inc(status="failed")
        log_event(log, "call_failed", session=session.id, call=call.id, reason=reason)
        session.fail_call(call.id, reason)

    def _forget(self, session_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._tasks.get(session_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[session_id]
        if not task.cancelled() and task.exception() is not None:
            log_event(log, "batch_crashed", logging.ERROR, session=session_id,
                      error=repr(task.exception()))  # fmt: skip


class CallError(Exception):
    """Why a call cannot run (its message completes 'call X failed: ...')."""
