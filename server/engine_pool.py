"""The server's engines (`--engines N`) and what the server has placed on each."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from server.engine import EngineStats, JobOutput, SamplingParams
from server.engine_driver import EngineDriver
from server.scheduling import NORMAL_PRIORITY, EngineLoad


class EnginePool:
    """Engines behind one tokenizer; loads count calls and tokens placed and not yet finished."""

    def __init__(self, drivers: list[EngineDriver]) -> None:
        if not drivers:
            raise ValueError("an engine pool needs at least one engine")
        self.drivers = drivers
        self.loads = [EngineLoad(i) for i in range(len(drivers))]

    @classmethod
    async def load(
        cls,
        count: int,
        model: str,
        device: str,
        dtype: str | None,
        processes: bool = False,
        log: tuple[str, str] = ("warning", "kv"),
        **config: Any,
    ) -> EnginePool:
        """`count` engines, in this process or (`processes`) each in a child process that logs
        at `log` = (level, format)."""
        return cls(
            await EngineDriver.load_many(count, model, device, dtype, processes, log, **config)
        )

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
        for driver in self.drivers:
            await driver.stop()

    def least_loaded(self) -> int:
        return min(self.loads, key=lambda x: (x.queued_tokens, x.running_calls, x.index)).index

    def snapshot(self) -> list[EngineLoad]:
        """Copies of the loads, for a scheduler to plan against."""
        return [dataclasses.replace(load) for load in self.loads]

    def add_load(self, engine: int, calls: int, tokens: int) -> None:
        load = self.loads[engine]
        load.running_calls += calls
        load.queued_tokens += tokens

    async def generate_plain(
        self, prompt: Sequence[int], sampling: SamplingParams, priority: int = NORMAL_PRIORITY
    ) -> AsyncIterator[JobOutput]:
        """A plain request on the least loaded engine (its prefix cache applies)."""
        with self._placed(1, len(prompt) + sampling.max_tokens) as driver:
            # closed with this one (not left to the garbage collector): its job stops at once
            outputs = driver.generate_plain(prompt, sampling, priority)
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    yield out

    async def generate_samples(
        self,
        prompt: Sequence[int],
        samplings: Sequence[SamplingParams],
        priority: int = NORMAL_PRIORITY,
    ) -> AsyncIterator[tuple[int, JobOutput]]:
        """Several samples of one prompt on the least loaded engine, the prompt computed once
        (see `EngineDriver.generate_samples`)."""
        cost = len(prompt) + sum(s.max_tokens for s in samplings)
        with self._placed(len(samplings), cost) as driver:
            samples = driver.generate_samples(prompt, samplings, priority)
            async with contextlib.aclosing(samples):
                async for item in samples:
                    yield item

    @contextlib.contextmanager
    def _placed(self, calls: int, tokens: int) -> Iterator[EngineDriver]:
        """The least loaded engine, with `calls` and `tokens` counted on it until the block
        ends."""
        engine = self.least_loaded()
        self.add_load(engine, calls, tokens)
        try:
            yield self.drivers[engine]
        finally:
            self.add_load(engine, -calls, -tokens)

    async def stats(self) -> EngineStats:
        """The engines' counters, summed."""
        total = EngineStats()
        for driver in self.drivers:
            stats = await driver.stats()
            for f in dataclasses.fields(EngineStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(stats, f.name))
        return total
