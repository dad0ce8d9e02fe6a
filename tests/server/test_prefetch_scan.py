"""The executor's prefetch scan (pipelined prefill) over a session's waiting calls. No engine:
stubs stand for the pool and its tokenizer, so only the scan itself runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server import executor as executor_module
from server.executor import Executor, ExecutorConfig
from server.metrics import Metrics
from server.scheduling import EngineLoad
from server.session import Session
from tests.server.graphs import chain, map_reduce


class _Driver:
    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return []  # shorter than any shared prefix: nothing is filled


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

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(3, 3 + 8 * len(text)))  # long enough to fill early


class _TwoEngines:
    """Engine 0 is the less loaded; which one holds what is `affinity`'s answer."""

    primary = _LongDriver()
    drivers = [_LongDriver(), _LongDriver()]

    def snapshot(self) -> list[EngineLoad]:
        return [EngineLoad(0, queued_tokens=0), EngineLoad(1, queued_tokens=500, running_calls=2)]

    def least_loaded(self) -> int:
        return 0


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
    session = Session("s", "token")
    session.graph = chain(2)
    executor._scan(session)
    assert filled == [want]
