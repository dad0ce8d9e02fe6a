"""The server's engines (`--engines N`), what the server has placed on each, and the restart of
engines whose process died."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from server.engine import EngineError, EngineStats, JobOutput, SamplingParams
from server.engine_counters import EngineCounters, add_gauges
from server.engine_driver import EngineDriver
from server.engine_process import EngineDied, EngineProcess
from server.log import log_event
from server.restart_policy import RestartBudget, RestartPolicy
from server.scheduling import NORMAL_PRIORITY, EngineLoad

log = logging.getLogger(__name__)
T = TypeVar("T")
# how long a request whose engine died waits for a restarted one before it is answered 503
REDO_WAIT_S = 120.0


class EngineUnavailable(EngineError):
    """No engine takes work now, and one is coming back: ask again shortly."""


class EnginePool:
    """Engines behind one tokenizer; loads count calls and tokens placed and not yet finished."""

    def __init__(self, drivers: list[EngineDriver]) -> None:
        if not drivers:
            raise ValueError("an engine pool needs at least one engine")
        self.drivers = drivers
        self.loads = [EngineLoad(i) for i in range(len(drivers))]
        self._threads_before: int | None = None  # torch's, restored at stop
        self._watched: set[int] = set()  # engines restarted when their process dies
        self._watchers: list[asyncio.Task[None]] = []
        self._counters = EngineCounters(len(drivers))

    @classmethod
    async def load(
        cls,
        count: int,
        model: str,
        device: str,
        dtype: str | None,
        processes: bool = False,
        log: tuple[str, str] = ("warning", "kv"),
        threads: int | None = None,
        **config: Any,
    ) -> EnginePool:
        """`count` engines, in this process or (`processes`) each in a child process that logs
        at `log` = (level, format); each runs `threads` compute threads (None: torch's)."""
        drivers = await EngineDriver.load_many(
            count, model, device, dtype, processes, log, threads, **config
        )
        pool = cls(drivers)
        if not processes and threads is not None:
            import torch  # here: engines in their own processes leave this one without torch

            if threads != torch.get_num_threads():
                # engines in this process run torch's (process-wide) thread count
                pool._threads_before = torch.get_num_threads()
                torch.set_num_threads(threads)
        return pool

    def __len__(self) -> int:
        return len(self.drivers)

    @property
    def primary(self) -> EngineDriver:
        """The engine whose tokenizer and limits stand for all (they share one model)."""
        return self.drivers[0]

    async def start(self) -> None:
        for driver in self.drivers:
            await driver.start()

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []
        self._watched.clear()
        for driver in self.drivers:
            await driver.stop()
        if self._threads_before is not None:
            import torch  # loaded already: `load` set its thread count

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def supervise(
        self,
        policy: RestartPolicy,
        on_lost: Callable[[int], None] = lambda _: None,
        on_back: Callable[[int], None] = lambda _: None,
        on_gone: Callable[[int], None] = lambda _: None,
    ) -> None:
        """Restart engines whose process dies, as `policy` allows. `on_lost(i)` runs when engine
        i dies (everything it held is gone), `on_back(i)` once its replacement takes work, and
        `on_gone(i)` when it stays down (work waiting for it must now fail, not wait)."""
        for index, driver in enumerate(self.drivers):
            if driver.restartable:
                self._watched.add(index)
                task = asyncio.create_task(
                    self._watch(index, RestartBudget(policy), on_lost, on_back, on_gone),
                    name=f"engine-{index}-watch",
                )
                self._watchers.append(task)

    @property
    def restarting(self) -> set[int]:
        """Engines whose process died and that will be restarted. Read from the engines, not
        kept by their watchers: a request that failed with an engine's death asks before the
        engine's watcher has run."""
        return {i for i in self._watched if not self.drivers[i].alive}

    def unavailable(self) -> str | None:
        """Why no engine can take a call now while one is being restarted, else None (an
        engine is alive, or none will come back: then calls go on and fail with its error)."""
        if any(d.alive for d in self.drivers) or not self.restarting:
            return None
        return "no engine is running: its process exited and is being restarted; retry shortly"

    def least_loaded(self) -> int:
        """Among the engines that take work (all of them, if none does)."""
        loads = self._placeable() or self.loads
        return min(loads, key=lambda x: (x.queued_tokens, x.running_calls, x.index)).index

    def snapshot(self) -> list[EngineLoad]:
        """Copies of the loads of the engines that take work, for a scheduler to plan against.
        None while the only engines are restarting (calls wait for them); all when none will
        come back (calls go on and fail with the engine's error)."""
        loads = self._placeable() or ([] if self.restarting else self.loads)
        return [dataclasses.replace(load) for load in loads]

    def _placeable(self) -> list[EngineLoad]:
        return [load for load, d in zip(self.loads, self.drivers, strict=True) if d.alive]

    def add_load(self, engine: int, calls: int, tokens: int) -> None:
        load = self.loads[engine]
        load.running_calls += calls
        load.queued_tokens += tokens

    def generate_plain(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        priority: int = NORMAL_PRIORITY,
        redo: bool = True,
        cache_salt: str | None = None,
    ) -> AsyncIterator[JobOutput]:
        """A plain request on the least loaded engine (its prefix cache applies, within
        `cache_salt`); with `redo`, see `_redone` for an engine that dies under it."""
        cost = len(prompt) + sampling.max_tokens
        return self._redone(
            1, cost, lambda d: d.generate_plain(prompt, sampling, priority, cache_salt), redo
        )

    def generate_samples(
        self,
        prompt: Sequence[int],
        samplings: Sequence[SamplingParams],
        priority: int = NORMAL_PRIORITY,
        redo: bool = True,
        cache_salt: str | None = None,
    ) -> AsyncIterator[tuple[int, JobOutput]]:
        """Several samples of one prompt on the least loaded engine, the prompt computed once
        (see `EngineDriver.generate_samples`, and `_redone` for `redo`)."""
        cost = len(prompt) + sum(s.max_tokens for s in samplings)

        def run(driver: EngineDriver) -> AsyncIterator[tuple[int, JobOutput]]:
            return driver.generate_samples(prompt, samplings, priority, cache_salt)

        return self._redone(len(samplings), cost, run, redo)

    async def _redone(
        self,
        calls: int,
        tokens: int,
        run: Callable[[EngineDriver], AsyncIterator[T]],
        redo: bool = True,
    ) -> AsyncIterator[T]:
        """`run` on the least loaded engine. If that engine dies before `run` yielded anything
        (the request waited in its queue, or was being prefilled), it runs again, once, on an
        engine that runs: at once if one does, else after waiting up to REDO_WAIT_S for a
        restart (with `redo`; without, the caller redoes what it can). Once something was
        yielded, the engine's death is the caller's error. Once only: a request that kills
        its engine must not take the restarts' whole budget."""
        attempts = 2 if redo else 1
        for attempt in range(attempts):
            produced = False
            try:
                with self._placed(calls, tokens) as driver:
                    # closed with this one (not left to the garbage collector): its job stops
                    stream = run(driver)
                    async with contextlib.aclosing(stream):  # type: ignore[type-var]
                        async for item in stream:
                            produced = True
                            yield item
                return
            except EngineDied as exc:
                if produced or not redo:
                    raise
                if attempt == attempts - 1:
                    raise self.redo_died(exc) from exc
            await self.until_available(REDO_WAIT_S)

    def redo_died(self, exc: EngineDied) -> EngineError:
        """What a request run again after its engine died is told when the engine of its redo
        dies too: to ask again shortly (503) while an engine is being restarted, as a request
        arriving then is (engines killed at once look the same as a request that killed two,
        which must not be redone again), else the death (500)."""
        if self.restarting:
            return EngineUnavailable(f"{exc}, under the request and under its redo; an engine "
                                     "is being restarted: retry shortly")  # fmt: skip
        return exc

    async def until_available(self, timeout_s: float) -> None:
        """Return once an engine takes work, none will come back, or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while self.unavailable() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @contextlib.contextmanager
    def _placed(self, calls: int, tokens: int) -> Iterator[EngineDriver]:
        """The least loaded engine, with `calls` and `tokens` counted on it until the block
        ends; `EngineUnavailable` while the only engines are restarting."""
        reason = self.unavailable()
        if reason is not None:
            raise EngineUnavailable(reason)
        engine = self.least_loaded()
        self.add_load(engine, calls, tokens)
        try:
            yield self.drivers[engine]
        finally:
            self.add_load(engine, -calls, -tokens)

    async def stats(self) -> EngineStats:
        """The engines' counters summed over their lives (a restarted engine's go on from its
        last life's, so they never go down), and the gauges of the engines that run."""
        total = EngineStats()
        for index, driver in enumerate(self.drivers):
            stats = None
            if driver.alive:
                with contextlib.suppress(EngineError):  # it died meanwhile
                    stats = await driver.stats()
            self._counters.record(index, driver.engine, stats)
            if stats is not None:
                add_gauges(total, stats)
        self._counters.add_to(total)
        return total

    async def _watch(
        self,
        index: int,
        budget: RestartBudget,
        on_lost: Callable[[int], None],
        on_back: Callable[[int], None],
        on_gone: Callable[[int], None],
    ) -> None:
        driver = self.drivers[index]
        while True:
            engine = driver.engine
            assert isinstance(engine, EngineProcess)
            await engine.exited.wait()
            on_lost(index)
            delay = budget.next_delay()
            log_event(
                log, "engine_exited", logging.ERROR, engine=index, pid=engine.pid,
                exit_code=engine.exit_code,
                restart_in_s="never" if delay is None else round(delay, 2),
            )  # fmt: skip
            if delay is None:
                self._watched.discard(index)
                on_gone(index)
                return
            await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                await driver.restart()
            except Exception as exc:  # another death, as the budget counts it
                log_event(log, "engine_restart_failed", logging.ERROR, engine=index,
                          error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                continue
            log_event(
                log, "engine_restarted", engine=index, pid=getattr(driver.engine, "pid", None),
                took_s=round(time.monotonic() - started, 2),
            )  # fmt: skip
            on_back(index)
