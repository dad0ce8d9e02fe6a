"""Runs ready calls on the engines, server-side: each output that completes releases its consumers.

A call is lowered to context primitives: fill the rendered text before an output (tokenized as
a whole), generate the output, append the following text, generate the next. Ready calls queue in
the `CallScheduler` (ordered by objective, task groups admitted together, placed by prefix
affinity then load). Prompt prefixes are keyed by segments and shared through the global prefix
store; a waiting call's ready leading segments are filled early (pipelined prefill).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from server.analysis import Boundary, boundaries
from server.engine import EngineError, SamplingParams
from server.engine_driver import TokenContext
from server.engine_pool import EnginePool
from server.engine_process import EngineDied
from server.executor_config import ExecutorConfig
from server.graph import Call, CallState, Generation, VariableState
from server.log import log_event
from server.lowering import GenerateStep, lower_call
from server.metrics import Metrics
from server.prefix_contexts import PrefixContexts
from server.prefix_store import PrefixEntry
from server.scheduling import (
    LATENCY_PRIORITY,
    AppPolicy,
    CallScheduler,
    FifoPolicy,
    WorkItem,
    choose_engine,
)
from server.session import Session
from server.session_plan import SessionPlan
from server.token_prefix import common_prefix_len

log = logging.getLogger(__name__)
# texts from this length on are tokenized in a worker thread (~80 ms of work inline here)
LONG_TEXT_CHARS = 64 * 1024


@dataclass(eq=False, slots=True)
class _Ready:
    session: Session
    call: Call
    ready_at: float = field(default_factory=time.perf_counter)  # queued with every input in


@dataclass(eq=False, slots=True)
class _Job:
    session: Session
    call: Call
    item: WorkItem[_Ready]
    steps: list[GenerateStep]
    prompt: list[int]  # tokens of the text before the first output
    bounds: list[Boundary]
    entry: PrefixEntry | None = None  # the stored prefix it forks from (referenced)


@dataclass(eq=False, slots=True)
class _FillLoad:
    """The tokens an early fill computes, counted as load on its engine while it runs."""

    key: str
    engine: int
    tokens: int
    counted: bool = True


class Executor:
    """Turns ready calls into engine work and feeds results back into their session."""

    def __init__(self, pool: EnginePool, metrics: Metrics, config: ExecutorConfig) -> None:
        self.pool = pool
        self.driver = pool.primary
        self.metrics = metrics
        self.config = config
        policy = AppPolicy() if config.app_scheduling else FifoPolicy()
        self.scheduler: CallScheduler[_Ready] = CallScheduler(policy, config.max_calls_per_engine)
        self.prefixes = PrefixContexts(pool, config.prefix_store, metrics)
        self._plans: dict[str, SessionPlan] = {}
        self._prefetched: dict[str, dict[str, str]] = {}  # session -> call -> boundary key
        # session -> call -> key of its latest early fill spawned (see `_fill_ahead`)
        self._filling_ahead: dict[str, dict[str, str]] = {}
        # session -> call -> its early fills still running (see `_count_fill`)
        self._fill_loads: dict[str, dict[str, list[_FillLoad]]] = {}
        self._fills_by_key: dict[str, _FillLoad] = {}  # the first running fill of each prefix
        # session -> task group -> the engine of its members' early fills (see `_fill_ahead`)
        self._group_fill_engines: dict[str, dict[str, int]] = {}
        # session -> call -> its inputs still missing when it was last scanned
        self._scanned: dict[str, dict[str, int]] = {}
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._scans: set[str] = set()  # sessions with a prefetch scan due
        self._placed: dict[int, int] = {}  # id of an admitted, unfinished item -> its engine
        # per session: its calls queued, its calls running (and their contexts), and the length
        # of its graph's await log taken in, so that a later await moves them up (`awaited`)
        self._queued: dict[str, set[WorkItem[_Ready]]] = {}
        self._running: dict[str, dict[int, tuple[_Job, TokenContext]]] = {}
        self._awaits_seen: dict[str, tuple[int, int]] = {}

    def dispatch(self, session: Session, calls: list[Call]) -> None:
        """Queue `calls` (all READY) of `session`; start what the engines have room for."""
        if session.closed:
            return
        self.awaited(session)  # a submission's awaits may name what was submitted before
        plan = self.plan(session)
        queued = self._queued.setdefault(session.id, set())
        for call in calls:
            group = plan.group(call.id)
            item = WorkItem(
                _Ready(session, call),
                plan.priority(call.id),
                _estimated_tokens(call, session),
                f"{session.id}/{group.id}" if group is not None else None,
            )
            self.scheduler.add(item)
            queued.add(item)
        self._pump()
        if self.config.pipelined_prefill and self.config.enable_prefix_sharing:
            self._prefetch(session)

    def awaited(self, session: Session) -> None:
        """Take in the client's awaits since the last call: the session's calls already queued
        or running whose objective they raised (a client reading outputs one by one, or
        awaiting what an earlier submission sent) move up, queued ones in the queue, running
        ones in their engine. Priorities are otherwise fixed when a call is queued."""
        graph = session.graph
        seen = (id(graph), len(graph.await_log))
        if self._awaits_seen.get(session.id) == seen:
            return
        self._awaits_seen[session.id] = seen
        plan = self.plan(session)
        for item in self._queued.get(session.id, ()):
            self.scheduler.raise_priority(item, plan.priority(item.payload.call.id))
        for job, ctx in self._running.get(session.id, {}).values():
            priority = plan.priority(job.call.id)
            if priority < job.item.priority:
                job.item.priority = priority  # its next steps run at it too
                ctx.boost(priority)

    def plan(self, session: Session) -> SessionPlan:
        plan = self._plans.get(session.id)
        if plan is None or plan.graph is not session.graph:
            plan = self._plans[session.id] = SessionPlan(session.graph, self.config.switches)
        return plan

    async def cancel_session(self, session_id: str) -> None:
        """Stop a session's queued and running calls and free their contexts."""
        self.scheduler.remove_if(lambda r: r.session.id == session_id)  # never started
        tasks = list(self._tasks.pop(session_id, ()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._plans.pop(session_id, None)
        self._queued.pop(session_id, None)
        self._running.pop(session_id, None)
        self._awaits_seen.pop(session_id, None)
        self._prefetched.pop(session_id, None)
        self._filling_ahead.pop(session_id, None)
        self._group_fill_engines.pop(session_id, None)
        self._scanned.pop(session_id, None)
        self._fill_loads.pop(session_id, None)  # emptied by its fills' ends, cancelled above

    def engine_lost(self, engine: int) -> None:
        """An engine died: what it held is gone (its calls fail with it)."""
        self.prefixes.drop_engine(engine)

    def engine_back(self, engine: int) -> None:
        """A restarted engine takes work: admit what waited for it."""
        self.metrics.engine_restarts.inc()
        self._pump()

    def engine_gone(self, engine: int) -> None:
        """An engine stays down: what waited for it is admitted (onto the engines left, or to
        fail with its error when none is), not left waiting."""
        self._pump()

    async def close(self) -> None:
        for session_id in list(self._tasks):
            await self.cancel_session(session_id)
        self.prefixes.close()

    # -- admission -----------------------------------------------------------------------------

    def _pump(self) -> None:
        admissions = self.scheduler.admit(self.pool.snapshot(), self._affinity)
        for admission in admissions:
            engine, items = admission.engine, admission.items
            for item in items:
                self.pool.add_load(engine, 1, item.cost_tokens)
                self._placed[id(item)] = engine
                self._fills_taken_over(item.payload, engine)
                self._queued.get(item.payload.session.id, set()).discard(item)
            task = self._spawn(items[0].payload.session, self._run_batch(engine, items))
            # a batch cancelled before it ran still gives its load back
            task.add_done_callback(lambda _, items=items: self._finish_all(items))

    def _affinity(self, unit: list[WorkItem[_Ready]]) -> dict[int, int]:
        if not self.config.enable_prefix_sharing:
            return {}
        ready = unit[0].payload
        try:
            keys = boundaries(ready.call, _values(ready.session, ready.call))
        except Exception:  # a hint only: the call itself fails, alone, when it is run
            log.exception("no prefix affinity for call %s of session %s", ready.call.id,
                          ready.session.id)  # fmt: skip
            return {}
        return self.prefixes.affinity(keys)

    def _finished(self, item: WorkItem[_Ready]) -> None:
        """An admitted item is done (once; later calls do nothing): its engine has room again."""
        engine = self._placed.pop(id(item), None)
        if engine is not None:
            self.pool.add_load(engine, -1, -item.cost_tokens)
            self._pump()

    def _finish_all(self, items: list[WorkItem[_Ready]]) -> None:
        for item in items:
            self._finished(item)

    # -- one admitted unit ---------------------------------------------------------------------

    async def _run_batch(self, engine: int, items: list[WorkItem[_Ready]]) -> None:
        jobs: list[_Job] = []
        for item in items:
            session, call = item.payload.session, item.payload.call
            if call.state is not CallState.READY or session.closed:
                self._finished(item)
                continue
            session.graph.start(call.id)
            self.metrics.calls_by_priority.inc(engine=str(engine), priority=str(item.priority))
            waited = time.perf_counter() - item.payload.ready_at
            self.metrics.call_queue.observe(waited, priority=str(item.priority))
            try:
                values = session.graph.input_values(call)
                steps = lower_call(call, values)
                self._check_length(call, steps[0].text_before)
                prompt = await self._encoded(steps[0].text_before, call.add_special_tokens)
                self._check_fits(call, prompt)
                keys = boundaries(call, values)
            except Exception as exc:  # fails this call (and what reads it), not the batch
                if not isinstance(exc, CallError):
                    log.exception("cannot prepare call %s of session %s", call.id, session.id)
                self._fail(session, call, str(exc) if isinstance(exc, CallError) else repr(exc))
                self._finished(item)
                continue
            jobs.append(_Job(session, call, item, steps, prompt, keys))
        contexts: list[TokenContext] = []
        try:
            try:
                await self._open_contexts(engine, jobs, contexts)
            except EngineError as exc:  # the engine died (or stopped) before any call ran
                for job in jobs:
                    self._engine_failed(engine, job, exc)
                return
            except Exception as exc:  # a defect: the calls fail, not stay running for good
                log.exception("cannot open contexts for %d calls on engine %d", len(jobs), engine)
                for job in jobs:
                    self._fail(job.session, job.call, repr(exc))
                return
            await self._run_together(engine, jobs, contexts)
        finally:
            # also when cancelled before a call's own cleanup could run
            for ctx in contexts:
                ctx.close()
            for job in jobs:
                self._release(job)

    async def _run_together(
        self, engine: int, jobs: list[_Job], contexts: list[TokenContext]
    ) -> None:
        """Run the calls of an admitted unit; their first generations reach the engine as one
        command (`EngineDriver.together`), so that a task group starts in one step."""
        runs = [
            asyncio.ensure_future(self._run_call(engine, job, ctx))
            for job, ctx in zip(jobs, contexts, strict=True)
        ]
        try:
            if len(runs) > 1:
                await self.pool.drivers[engine].together()
            await asyncio.gather(*runs)
        finally:
            pending = [run for run in runs if not run.done()]
            for run in pending:
                run.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _open_contexts(
        self, engine: int, jobs: list[_Job], contexts: list[TokenContext]
    ) -> None:
        """Append to `contexts` one per job: a fork of a stored prefix, or a fresh context."""
        if not self.config.enable_prefix_sharing:
            contexts.extend(self.pool.drivers[engine].new_context() for _ in jobs)
            return
        priority = min((job.item.priority for job in jobs), default=0)
        stored = [self.prefixes.deepest(job.bounds, engine) for job in jobs]
        held = [hit[1] for hit in stored if hit is not None]
        for entry in held:  # kept from eviction until the jobs hold their own references
            self.prefixes.acquire(entry)
        opened: dict[str, PrefixEntry | None] = {}
        try:
            for i, hit in enumerate(stored):
                if hit is not None and not await self.prefixes.filled(hit[1], priority):
                    stored[i] = None
            shared = _deepest_shared_boundaries(jobs, stored)
            await self._fork_all(engine, jobs, contexts, stored, shared, opened, priority)
        finally:
            for entry in [*held, *(e for e in opened.values() if e is not None)]:
                self.prefixes.release(entry)

    async def _fork_all(
        self,
        engine: int,
        jobs: list[_Job],
        contexts: list[TokenContext],
        stored: list[tuple[int, PrefixEntry] | None],
        shared: dict[int, tuple[str, list[int]]],
        opened: dict[str, PrefixEntry | None],
        priority: int,
    ) -> None:
        """A context per job: shared boundaries of the batch are filled once (and stored), a
        lone call stores its template's leading text; the rest fork from what is stored."""
        for i, job in enumerate(jobs):
            hit = stored[i]
            entry = hit[1] if hit is not None else None
            # a lone call stores its leading text up to its first input
            lead = next((b for b in job.bounds if not b.after_input), None)
            key: str | None = None
            if i in shared:
                key = shared[i][0]
            elif hit is None and lead is not None:
                key = lead.key
            if key is not None and key not in opened:
                if i in shared:
                    tokens = _shared_tokens([jobs[m].prompt for m in shared[i][1]])
                else:
                    assert lead is not None
                    tokens = await self._boundary_tokens(lead, job)
                opened[key] = None
                if len(tokens) >= self.config.min_shared_prefix_tokens:
                    opened[key] = await self.prefixes.open(engine, key, tokens, priority, entry)
            if key is not None and opened[key] is not None:
                entry = opened[key]
            if entry is not None:
                self.prefixes.acquire(entry)
                job.entry = entry
                contexts.append(self.prefixes.fork(entry, job.prompt))
            else:
                contexts.append(self.pool.drivers[engine].new_context())

    async def _boundary_tokens(self, boundary: Boundary, job: _Job) -> list[int]:
        """The tokens of a boundary's text that the job's prompt starts with, less the last
        few."""
        prompt = job.prompt
        tokens = await self._encoded(boundary.text, job.call.add_special_tokens)
        n = min(common_prefix_len(tokens, prompt), len(tokens) - self.config.boundary_trim_tokens)
        return prompt[: max(0, min(n, len(prompt) - 1))]

    async def _run_call(self, engine: int, job: _Job, ctx: TokenContext) -> None:
        session, call = job.session, job.call
        running = self._running.setdefault(session.id, {})
        running[id(job)] = (job, ctx)
        try:
            text = ""
            for i, step in enumerate(job.steps):
                text += step.text_before
                if i > 0:
                    self._check_length(call, text, step.output)
                target = (
                    job.prompt if i == 0 else await self._encoded(text, call.add_special_tokens)
                )
                self._check_fits(call, target, None if i == 0 else step.output)
                hold = self._latency_hold(session, call, job.steps, i, job.item.priority)
                if hold:
                    self.metrics.latency_holds.inc()
                value, generation = await self._generate(
                    session, call, step, ctx, target, job.item.priority, hold
                )
                self.metrics.prompt_tokens.inc(len(target) if i == 0 else ctx.last_fill.filled)
                text += value
                ready = session.complete_output(call.id, step.output, value, generation)
                self.dispatch(session, ready)
            self.metrics.calls.inc(status="done")
            took = time.perf_counter() - job.item.payload.ready_at
            self.metrics.call_latency.observe(took, priority=str(job.item.priority))
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            self._engine_failed(engine, job, exc)
        except Exception as exc:  # fails this call and what depends on it
            if not isinstance(exc, CallError | ValueError):
                log.exception("unexpected error in call %s of session %s", call.id, session.id)
            self._fail(session, call, str(exc) or type(exc).__name__)
        finally:
            running.pop(id(job), None)
            ctx.close()
            self._release(job)

    async def _generate(
        self,
        session: Session,
        call: Call,
        step: GenerateStep,
        ctx: TokenContext,
        target: list[int],
        priority: int,
        hold_latency_s: float = 0.0,
    ) -> tuple[str, Generation]:
        """The output's text, and how it was generated."""
        s = call.sampling
        params: dict[str, Any] = dict(
            max_tokens=min(s.max_tokens, self.driver.max_model_len - len(target)),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stop=list(step.stop),
            ignore_eos=s.ignore_eos,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            logit_bias=dict(s.logit_bias),
            json_object=s.json_schema is not None,
            json_schema=None if s.json_schema is None else json.loads(s.json_schema),
            choices=None if s.choices is None else list(s.choices),
            regex=s.regex,
            grammar=s.grammar,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
        )
        # a constraint compiles (~1 s near its cap) where it was not found in its cache: the
        # call's check put it there when submitted, but a call that waited for its inputs may
        # find it pushed out by newer ones since, so never on the event loop
        if s.constrained:
            sampling = await asyncio.to_thread(lambda: SamplingParams(**params))
        else:
            sampling = SamplingParams(**params)
        var_id = call.outputs[step.output]
        text, generated, reason, cached = "", 0, "length", 0
        async for out in ctx.generate(
            sampling, priority, fill_to=target, hold_latency_s=hold_latency_s
        ):
            session.push_chunk(var_id, out.new_text)
            text, generated, reason = out.text, len(out.token_ids), out.finish_reason or reason
            cached = out.cached_tokens if out.cached_tokens is not None else cached
        return text, Generation(len(target), generated, reason, cached)

    def _latency_hold(
        self, session: Session, call: Call, steps: list[GenerateStep], i: int, priority: int
    ) -> float:
        """How long the engine keeps its latency cap after step i's generation: only when
        latency-critical work follows it at once (the call's next step, or a latency-critical
        call reading this output), which the server needs a moment to submit."""
        hold = self.config.latency_hold_s
        if hold == 0 or priority != LATENCY_PRIORITY:
            return 0.0
        if i + 1 < len(steps):
            return hold
        variable = session.graph.variables[call.outputs[steps[i].output]]
        plan = self.plan(session)
        readers = (plan.priority(c) for c in variable.consumers)
        return hold if any(p == LATENCY_PRIORITY for p in readers) else 0.0

    def _engine_failed(self, engine: int, job: _Job, exc: EngineError) -> None:
        """A call whose engine died before it set an output, and whose text nobody has read
        yet (streamed), runs again from the start on an engine that runs (after a restart, if
        none does): once, and again while its engine's death overlaps another's restart, up
        to once per engine. Engines killed at once die one by one to the server, so a redo
        may go to an engine already dead; unlike a plain request, a graph call has no client
        to tell to retry. A call that kills every engine it runs on (the two cases look the
        same) kills one more than there are engines; then it fails, with what depends on it."""
        session, call = job.session, job.call
        first = session.graph.variables[call.outputs[job.steps[0].output]]
        feed = session.feed(first.id)
        overlapping = bool(self.pool.restarting - {engine})
        redo = (
            isinstance(exc, EngineDied)
            and (call.requeued == 0 or (overlapping and call.requeued < len(self.pool)))
            and call.state is CallState.RUNNING
            and first.state is VariableState.PENDING
            and not feed.followed
            and not session.closed
        )
        if not redo:
            reason = str(exc) or type(exc).__name__
            if call.requeued:
                reason += f" (under each of its {call.requeued + 1} runs)"
            self._fail(session, call, reason)
            return
        feed.restart()
        session.graph.requeue(call.id)
        self.metrics.calls_requeued.inc()
        log_event(log, "call_requeued", session=session.id, call=call.id, reason=str(exc))
        self._release(job)  # its load on the dead engine, before it is placed again
        self.dispatch(session, [call])

    def _release(self, job: _Job) -> None:
        """Once per job: drop its prefix reference and its load."""
        if job.entry is not None:
            self.prefixes.release(job.entry)
            job.entry = None
        self._finished(job.item)

    # -- pipelined prefill ---------------------------------------------------------------------

    def _prefetch(self, session: Session) -> None:
        """Fill the ready leading segments of waiting calls before their other inputs arrive.

        The scan runs once the current burst of completions is handled, so a reduce whose
        inputs all arrive at once becomes ready instead of prefilling every partial prompt.
        """
        if session.id not in self._scans:
            self._scans.add(session.id)
            asyncio.get_running_loop().call_soon(self._scan, session)

    def _scan(self, session: Session) -> None:
        self._scans.discard(session.id)
        if session.closed:
            return
        done = self._prefetched.setdefault(session.id, {})
        scanned = self._scanned.setdefault(session.id, {})
        plan = self.plan(session)
        for call in session.graph.calls.values():
            # A call's boundaries change only when one of its inputs gets a value: without
            # this, each completion in a chain of N calls took the boundaries of every call
            # still waiting (N^2 in all).
            if call.state is not CallState.WAITING or scanned.get(call.id) == len(call.missing):
                continue
            scanned[call.id] = len(call.missing)
            try:
                bounds = boundaries(call, _values(session, call))
                if not bounds or done.get(call.id) == bounds[-1].key:
                    continue
                done[call.id] = bounds[-1].key
                if self.prefixes.holds(bounds[-1].key):
                    continue
                text = bounds[-1].text
                if self._too_long(text):  # the call fails when it runs, without tokenizing
                    continue
                if len(text) >= LONG_TEXT_CHARS:  # tokenized in a thread, then filled
                    self._spawn(session, self._fill_long(session, call, bounds, plan))
                    continue
                tokens = self.driver.encode_prompt(text, call.add_special_tokens)
            except Exception:  # an early fill is an optimisation: the call fails when it runs
                log.exception("no early fill for call %s of session %s", call.id, session.id)
                continue
            self._fill_ahead(session, call, bounds, tokens, plan)

    async def _fill_long(
        self, session: Session, call: Call, bounds: list[Boundary], plan: SessionPlan
    ) -> None:
        tokens = await self._encoded(bounds[-1].text, call.add_special_tokens)
        if not session.closed and call.state is CallState.WAITING:
            self._fill_ahead(session, call, bounds, tokens, plan)

    def _fill_ahead(
        self,
        session: Session,
        call: Call,
        bounds: list[Boundary],
        tokens: list[int],
        plan: SessionPlan,
    ) -> None:
        """Fill a waiting call's ready leading text (`tokens`, of its last boundary) ahead of
        its other inputs, unless it is too short to pay or mostly stored already."""
        tokens = tokens[: len(tokens) - self.config.boundary_trim_tokens]
        if len(tokens) < self.config.min_shared_prefix_tokens:
            return
        key = bounds[-1].key
        # Calls with the same leading text (a map stage over one document) each spawn a fill
        # of it in one scan, before any is stored: the same engine's, where the later ones
        # wait for the first (see `PrefixContexts.open`) and so add no load.
        twin = self._fills_by_key.get(key)
        # A task group runs on one engine, placed by its first member's prefix: its members'
        # fills (each its own document, the question still missing) go where the first went,
        # or spread by load they would be computed again where the group runs.
        group = plan.group(call.id)
        groups = self._group_fill_engines.setdefault(session.id, {})
        if twin is not None:
            engine = twin.engine
        elif group is not None and group.id in groups:
            engine = groups[group.id]
        else:
            engine = self._early_fill_engine(bounds[:-1])
        if not self.pool.drivers[engine].alive:
            return  # no engine runs now: the call fills its prefix when it runs
        hit = self.prefixes.deepest(bounds[:-1], engine)
        base = hit[1] if hit is not None else None
        if base is not None and len(tokens) - base.num_tokens < self.config.min_shared_prefix_tokens:
            return  # e.g. a reduce whose inputs arrive one by one: wait for more text
        # the call's own priority: its prefix is on the same path as the call
        priority = plan.priority(call.id)
        latest = self._filling_ahead.setdefault(session.id, {})
        latest[call.id] = key

        def wanted() -> bool:
            # A fill from a base still being filled waits for it, unstored. Meanwhile the call
            # may have become ready (it forked what was stored and computes the rest itself),
            # or a later input may have started a deeper fill from the same base (this one is
            # no base to it): made anyway, it would compute tokens that no call uses.
            return (
                call.state is CallState.WAITING
                and not session.closed
                and latest.get(call.id) == key
            )

        if group is not None:
            groups.setdefault(group.id, engine)
        task = self._spawn(session, self._prefill(engine, key, tokens, priority, base, wanted))
        computed = 0 if twin is not None else len(tokens) - (base.num_tokens if base else 0)
        self._count_fill(session.id, call.id, key, engine, computed, task)

    def _count_fill(
        self,
        session_id: str,
        call_id: str,
        key: str,
        engine: int,
        tokens: int,
        task: asyncio.Task[None],
    ) -> None:
        """Count an early fill's tokens as load on its engine until it ends (however it ends:
        done, failed, unwanted or cancelled): else a burst of them (a map stage whose calls
        each fill their own document before their question is in) all went to the engine
        least loaded at the time, and their calls followed them there. No call slot: a fill
        is no call, and must not keep ready calls off its engine."""
        fill = _FillLoad(key, engine, tokens)
        self.pool.add_load(engine, 0, tokens)
        self._fills_by_key.setdefault(key, fill)
        fills = self._fill_loads.setdefault(session_id, {}).setdefault(call_id, [])
        fills.append(fill)

        def ended(_: asyncio.Task[None]) -> None:
            self._uncount_fill(fill)
            if self._fills_by_key.get(key) is fill:
                del self._fills_by_key[key]
            fills.remove(fill)
            if not fills:
                calls = self._fill_loads.get(session_id, {})
                if calls.get(call_id) is fills:
                    del calls[call_id]
                if not calls:
                    self._fill_loads.pop(session_id, None)

        task.add_done_callback(ended)

    def _fills_taken_over(self, ready: _Ready, engine: int) -> None:
        """A call admitted onto `engine` counts its whole prompt there (`cost_tokens`), the
        part its early fills there still compute included: those stop counting, or the
        engine would carry that text twice until they end."""
        for fill in self._fill_loads.get(ready.session.id, {}).get(ready.call.id, ()):
            if fill.engine == engine:
                self._uncount_fill(fill)

    def _uncount_fill(self, fill: _FillLoad) -> None:
        if fill.counted:
            fill.counted = False
            self.pool.add_load(fill.engine, 0, -fill.tokens)

    def _early_fill_engine(self, bounds: list[Boundary]) -> int:
        """The engine holding most of the call's leading text (a system prompt), else the least
        loaded: filled elsewhere, that text would be computed again, and the call, placed
        where its deepest prefix is, would follow the early fill there."""
        loads = self.pool.snapshot()
        engine = choose_engine(loads, self.prefixes.affinity(bounds), max_calls=sys.maxsize)
        return self.pool.least_loaded() if engine is None else engine

    async def _prefill(
        self,
        engine: int,
        key: str,
        tokens: list[int],
        priority: int,
        base: PrefixEntry | None,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        chunk = self.config.pipelined_prefill_chunk or None
        entry = await self.prefixes.open(
            engine, key, tokens, priority, base, pipelined=True, yield_tokens=chunk, wanted=wanted
        )
        if entry is not None:
            self.prefixes.release(entry)

    # -- helpers -------------------------------------------------------------------------------

    async def _encoded(self, text: str, add_special_tokens: bool) -> list[int]:
        """A call's prompt tokens. A long text (a large input's) is tokenized in a worker
        thread, where the tokenizer lets go of the GIL: inline it would stall every stream
        on the server (~1 s per MB here); a short one inline, without a thread hop."""
        if len(text) < LONG_TEXT_CHARS:
            return self.driver.encode_prompt(text, add_special_tokens)
        return await asyncio.to_thread(self.driver.encode_prompt, text, add_special_tokens)

    def _spawn(self, session: Session, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"calls-{session.id}")
        self._tasks.setdefault(session.id, set()).add(task)
        task.add_done_callback(lambda t: self._forget(session.id, t))
        return task

    def _too_long(self, text: str) -> bool:
        return self.driver.fewest_tokens(text) >= self.driver.max_model_len

    def _check_length(self, call: Call, text: str, output: str | None = None) -> None:
        """Fails a prompt whose length alone shows it past the context, before it is tokenized
        (a 20 MB input took ~20 s to tokenize, only to fail `_check_fits`)."""
        fewest = self.driver.fewest_tokens(text)
        if fewest >= self.driver.max_model_len:
            before = "" if output is None else f" up to output {output!r}"
            raise CallError(
                f"its prompt{before} has at least {fewest} "
                f"tokens (by its {len(text.encode('utf-8', 'surrogatepass'))} bytes), which "
                f"leaves no room to generate in the model's context of "
                f"{self.driver.max_model_len} tokens"
            )

    def _check_fits(self, call: Call, prompt: list[int], output: str | None = None) -> None:
        """`output`: a later output's name, whose prompt is the text before it (the earlier
        outputs included), named in the error."""
        limit = self.driver.max_model_len
        if len(prompt) >= limit:
            before = "" if output is None else f" up to output {output!r}"
            raise CallError(
                f"its prompt{before} has {len(prompt)} tokens, which leaves no room to generate "
                f"in the model's context of {limit} tokens"
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


def _values(session: Session, call: Call) -> dict[str, str | None]:
    """A call's input values by template name (None where not set yet)."""
    values: dict[str, str | None] = {}
    for name, var_id in call.inputs.items():
        var = session.graph.variables[var_id]
        values[name] = var.value if var.state is VariableState.READY else None
    return values


def _estimated_tokens(call: Call, session: Session) -> int:
    """A rough size for load balancing: prompt characters / 4 plus the generation budget."""
    chars = len(call.template.source) + sum(
        len(session.graph.variables[v].value or "") for v in call.inputs.values()
    )
    return chars // 4 + call.sampling.max_tokens


def _deepest_shared_boundaries(
    jobs: list[_Job], stored: list[tuple[int, PrefixEntry] | None]
) -> dict[int, tuple[str, list[int]]]:
    """For jobs of one batch: the deepest boundary each shares with another job (deeper than
    its stored prefix), as job index -> (key, indices of the jobs sharing it)."""
    holders: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        for boundary in job.bounds:
            holders.setdefault(boundary.key, []).append(i)
    shared: dict[int, tuple[str, list[int]]] = {}
    for i, job in enumerate(jobs):
        floor = stored[i][0] if stored[i] is not None else -1
        for depth in range(len(job.bounds) - 1, floor, -1):
            members = holders[job.bounds[depth].key]
            if len(members) > 1:
                shared[i] = (job.bounds[depth].key, members)
                break
    return shared


def _shared_tokens(prompts: list[list[int]]) -> list[int]:
    """The common token prefix of prompts, leaving each at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        n = min(n, common_prefix_len(prompts[0], other))
    return prompts[0][: max(0, n)]
