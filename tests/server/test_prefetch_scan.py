"""The executor's prefetch scan (pipelined prefill) over a session's waiting calls. No engine:
stubs stand for the pool and its tokenizer, so only the scan itself runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server import executor as executor_module
from server.executor import Executor, ExecutorConfig
from server.graph import CallState
from server.metrics import Metrics
from server.scheduling import EngineLoad
from server.session import Session
from tests.server.gated_engine import GatedDriver, GatedEngine
from tests.server.graphs import chain, map_reduce


class _Driver:
    max_model_len = 100_000

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return []  # shorter than any shared prefix: nothing is filled

    def fewest_tokens(self, text: str) -> int:
        return 0


class _Pool:
    primary = _Driver()


def test_a_chain_scans_each_waiting_call_once_per_new_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each completion in a chain scans the session; taking the boundaries of every call still
    # waiting each time made a chain of N calls cost N^2 boundaries.
    taken: list[str] = []
    real = executor_module.boundaries

    def counting(call: Any, values: Any) -> Any:
        taken.append(call.id)
        return real(call, values)

    monkeypatch.setattr(executor_module, "boundaries", counting)
    executor = Executor(_Pool(), Metrics(), ExecutorConfig())  # type: ignore[arg-type]
    session = Session("s", "token")
    n = 120
    session.graph = chain(n)
    executor._scan(session)
    assert len(taken) == n - 1  # every waiting call once
    for i in range(n - 1):
        session.graph.start(f"step{i}")
        session.complete_output(f"step{i}", "s", f"summary {i}")
        executor._scan(session)
    # the call whose input came is ready (no longer scanned); the others are unchanged
    assert len(taken) == n - 1
    # a call still waiting after an input came is scanned again
    session.graph = map_reduce(3)
    executor._scan(session)
    session.graph.start("map0")
    session.complete_output("map0", "s", "summary")
    executor._scan(session)
    executor._scan(session)
    assert taken[n - 1 :] == ["reduce", "reduce"]


class _LongDriver:
    alive = True
    max_model_len = 100_000

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(3, 3 + 8 * len(text)))  # long enough to fill early

    def fewest_tokens(self, text: str) -> int:
        return 0


class _TwoEngines:
    """Engine 0 is the less loaded; which one holds what is `affinity`'s answer."""

    primary = _LongDriver()
    drivers = [_LongDriver(), _LongDriver()]

    def snapshot(self) -> list[EngineLoad]:
        return [EngineLoad(0, queued_tokens=0), EngineLoad(1, queued_tokens=500, running_calls=2)]

    def least_loaded(self) -> int:
        return 0

    def add_load(self, engine: int, calls: int, tokens: int) -> None:
        pass  # an early fill's tokens: `snapshot` is fixed here


@pytest.mark.parametrize(("held", "want"), [({1: 40}, 1), ({}, 0)])
def test_an_early_fill_goes_to_the_engine_holding_the_calls_leading_text(
    monkeypatch: pytest.MonkeyPatch, held: dict[int, int], want: int
) -> None:
    # It went to the least loaded engine, which computed again the text another held; the
    # call, placed where its deepest prefix is, then ran there too.
    executor = Executor(_TwoEngines(), Metrics(), ExecutorConfig())  # type: ignore[arg-type]
    monkeypatch.setattr(executor.prefixes, "affinity", lambda bounds: held)
    monkeypatch.setattr(executor.prefixes, "holds", lambda key: False)
    monkeypatch.setattr(executor.prefixes, "deepest", lambda bounds, engine: None)
    filled: list[int] = []

    async def prefill(engine: int, *args: Any) -> None:
        filled.append(engine)

    monkeypatch.setattr(executor, "_prefill", prefill)
    monkeypatch.setattr(executor, "_spawn", lambda session, coro: asyncio.run(coro))
    monkeypatch.setattr(executor, "_count_fill", lambda *args: None)  # no task to watch
    session = Session("s", "token")
    session.graph = chain(2)
    executor._scan(session)
    assert filled == [want]


class _GatedPool:
    def __init__(self) -> None:
        self.engine = GatedEngine()
        self.primary = GatedDriver(self.engine)
        self.drivers = [self.primary]

    def snapshot(self) -> list[EngineLoad]:
        return [EngineLoad(0)]

    def least_loaded(self) -> int:
        return 0

    def add_load(self, engine: int, calls: int, tokens: int) -> None:
        pass  # one engine: its load changes nothing


def _summarize(session: Session, i: int) -> None:
    session.graph.start(f"map{i}")
    session.complete_output(f"map{i}", "s", f"the summary of part {i} of the paper")


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize("overtaken", [False, True])
def test_an_early_fill_no_call_can_use_is_not_made(overtaken: bool) -> None:
    """The reduce's leading text is being filled when map0's summary arrives: the next fill
    (through summary 0) forks it once it is done, so it waits. Then either map1's summary comes
    too, and a fill through summary 1 forks the same base (the waiting one is not stored yet),
    or every summary comes and the reduce is ready (it forks what is stored and computes the
    rest itself). Both times the waiting fill was made anyway once its base was done, and
    computed tokens that no call used: prefill + cached exceeded the calls' prompt tokens."""
    config = ExecutorConfig(min_shared_prefix_tokens=4)

    async def run() -> tuple[list[int], float, Executor]:
        pool = _GatedPool()
        executor = Executor(pool, Metrics(), config)  # type: ignore[arg-type]
        session = Session("s", "token")
        session.graph = map_reduce(3)
        executor._scan(session)  # "Combine: " (less the trimmed tokens), from scratch
        await _settle()
        _summarize(session, 0)
        executor._scan(session)  # through summary 0: forks the first fill once it is done
        await _settle()
        _summarize(session, 1)
        if overtaken:
            _summarize(session, 2)
            assert session.graph.calls["reduce"].state is CallState.READY
        executor._scan(session)
        await _settle()
        pool.engine.gate.set()
        await _settle()
        return pool.engine.filled, executor.metrics.pipelined_prefill_tokens.value(), executor

    filled, pipelined, executor = asyncio.run(run())
    text = "Combine: the summary of part 0 of the paper the summary of part 1 of the paper"
    lead = len("Combine: ") - config.boundary_trim_tokens
    deepest = len(text) + 1 - config.boundary_trim_tokens  # and the space before summary 2
    # one fill from scratch, then only the deepest boundary's, from it
    assert filled == ([lead] if overtaken else [lead, deepest - lead])
    assert pipelined == sum(filled)
    assert len(executor.prefixes.store) == len(filled)
