"""`Rounds` without a server: strands' waits are submitted together once no strand is left
tracing, whether the others wait, have ended or raised; errors go to the strands they concern."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from parrot_bridge.langchain.rounds import Rounds
from parrot_bridge.variable import SemanticVariable


class FakeServer:
    """A `Submit` that records each round's variables and gives them values."""

    def __init__(self, fail: set[str] | None = None, refuse: bool = False) -> None:
        self.rounds: list[list[str]] = []
        self.fail = fail or set()
        self.refuse = refuse

    def __call__(self, variables: list[SemanticVariable]) -> dict[str, BaseException]:
        self.rounds.append(sorted(v.name for v in variables))
        if self.refuse:
            raise RuntimeError("submission refused")
        return {v.id: RuntimeError(f"{v.name} failed") for v in variables if v.name in self.fail}


def waits_for(rounds: Rounds, *names: str, then: Callable[[], Any] = lambda: None) -> Any:
    """A strand's task: wait for variables `names` (one round each), then `then()`."""
    for name in names:
        with rounds.waiting([SemanticVariable(name=name)]):
            time.sleep(0.01)  # a client step: others may take the baton meanwhile
    return then()


def test_strands_that_wait_at_once_make_one_round_and_a_second_wait_another() -> None:
    server = FakeServer()
    rounds = Rounds(server)
    outs = rounds.fork([lambda i=i: waits_for(rounds, f"a{i}", f"b{i}", then=lambda: i)
                        for i in range(5)])  # fmt: skip
    assert [o.value for o in outs] == list(range(5))
    assert server.rounds == [[f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)]]


def test_a_fork_of_more_tasks_than_strands_runs_them_in_slices() -> None:
    server = FakeServer()
    rounds = Rounds(server, max_strands=3)
    alive, most = [0], [0]
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])
        try:
            return waits_for(rounds, f"a{i}", then=lambda: i)
        finally:
            with lock:
                alive[0] -= 1

    outs = rounds.fork([lambda i=i: task(i) for i in range(7)])
    assert [o.value for o in outs] == list(range(7)) and most[0] == 3
    assert server.rounds == [["a0", "a1", "a2"], ["a3", "a4", "a5"], ["a6"]]


def test_a_strand_that_ends_or_raises_counts_as_no_longer_tracing() -> None:
    server = FakeServer()
    rounds = Rounds(server)

    def boom() -> None:
        raise ValueError("bad input")

    outs = rounds.fork([lambda: waits_for(rounds, "a"), lambda: 7, boom,
                        lambda: waits_for(rounds, "b", then=boom)])  # fmt: skip
    assert outs[1].value == 7
    assert isinstance(outs[2].error, ValueError) and isinstance(outs[3].error, ValueError)
    assert server.rounds == [["a", "b"]]


def test_nested_forks_join_their_waits_into_the_same_round() -> None:
    server = FakeServer()
    rounds = Rounds(server)

    def branches(i: int) -> list[Any]:
        outs = rounds.fork([lambda j=j: waits_for(rounds, f"{i}.{j}", then=lambda: j)
                            for j in range(3)])  # fmt: skip
        waits_for(rounds, f"after{i}")
        return [o.value for o in outs]

    outs = rounds.fork([lambda i=i: branches(i) for i in range(2)])
    assert [o.value for o in outs] == [[0, 1, 2]] * 2
    assert server.rounds == [sorted(f"{i}.{j}" for i in range(2) for j in range(3)),
                             ["after0", "after1"]]  # fmt: skip


def test_a_failed_variable_fails_its_waiter_alone_and_a_refused_round_every_waiter() -> None:
    rounds = Rounds(FakeServer(fail={"b"}))
    outs = rounds.fork([lambda: waits_for(rounds, "a", then=lambda: "ok"),
                        lambda: waits_for(rounds, "b")])  # fmt: skip
    assert outs[0].value == "ok" and str(outs[1].error) == "b failed"
    rounds = Rounds(FakeServer(refuse=True))
    outs = rounds.fork([lambda: waits_for(rounds, "a"), lambda: waits_for(rounds, "b")])
    assert [str(o.error) for o in outs] == ["submission refused"] * 2


def test_one_strand_traces_at_a_time_and_the_root_waits_alone() -> None:
    server = FakeServer()
    rounds = Rounds(server)
    inside = threading.Semaphore(1)  # the baton's holders never overlap

    def traced(name: str) -> None:
        for _ in range(3):
            assert inside.acquire(blocking=False)
            time.sleep(0.005)
            inside.release()
            with rounds.waiting([SemanticVariable(name=name)]):
                pass

    assert all(o.error is None for o in rounds.fork([lambda n=n: traced(n) for n in "xyz"]))
    assert server.rounds == [["x", "y", "z"]] * 3
    waits_for(rounds, "alone")  # the root's own wait: submitted at once, as before a batch
    assert server.rounds[-1] == ["alone"]


def test_a_keyboard_interrupt_in_a_strand_is_raised_by_the_fork() -> None:
    rounds = Rounds(FakeServer())

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rounds.fork([lambda: waits_for(rounds, "a"), interrupted])
