"""The executor's prefetch scan (pipelined prefill) over a session's waiting calls. No engine:
a stub tokenizer that yields too few tokens to fill, so only the scan itself runs."""

from __future__ import annotations

from typing import Any

import pytest

from server import executor as executor_module
from server.executor import Executor, ExecutorConfig
from server.metrics import Metrics
from server.session import Session
from tests.server.graphs import chain, map_reduce


class _Driver:
    def encode(self, text: str) -> list[int]:
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
