"""`Rounds`: the strands of one trace (batch inputs, parallel branches, map items, each a thread)
and the rounds in which the values they wait for are submitted as one graph.

One strand traces at a time: it holds the baton, the others wait in line (branches in their
order, right after their fork, as a sequential trace would run them), so the tracer's state
needs no lock of its own. A strand that needs generated values registers them and gives the
baton up. Once no strand is left tracing (each waits for values or for its branches, or is
done), the last one to stop submits everything pending as one graph, waits for the values and
wakes the waiters; they run their client steps concurrently, without the baton, and take it
back to trace on (the next round groups their waits likewise).
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from parrot_bridge.variable import SemanticVariable

# submits what is pending and waits for these variables: the error of each that failed, by id
Submit = Callable[[list[SemanticVariable]], dict[str, BaseException]]
# strands (threads) one fork runs at once: a batch of more inputs runs in slices of this many,
# each slice's waits a round of its own (a thread per input of a 10,000-input batch would be
# 10,000 threads, where a plain batch runs a few at a time)
MAX_STRANDS = 256


@dataclass(eq=False)
class Strand:
    """A line of tracing: `waited` holds its client steps not yet told whether they split the
    graph (see `Tracer`); a branch's go to its parent when it ends."""

    parent: Strand | None = None
    waited: list[tuple[str, str]] = field(default_factory=list)
    branches_left: int = 0
    # its turn to trace: one condition per strand (over the rounds' lock), so that handing the
    # baton on wakes the one thread it goes to, not every thread of a large batch
    turn: threading.Condition | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a strand's task gave: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Round:
    wanted: dict[str, SemanticVariable] = field(default_factory=dict)
    waiters: int = 0
    done: bool = False
    failure: BaseException | None = None  # the submission's, for every waiter
    errors: dict[str, BaseException] = field(default_factory=dict)  # by variable id

    def raise_for(self, variables: Sequence[SemanticVariable]) -> None:
        if self.failure is not None:
            raise self.failure
        for var in variables:
            if var.id in self.errors:
                raise self.errors[var.id]


class Rounds:
    """Strands and rounds of one trace; the thread that creates it traces first (the root)."""

    def __init__(self, submit: Submit, max_strands: int = MAX_STRANDS) -> None:
        if max_strands < 2:
            raise ValueError(f"max_strands must be >= 2, got {max_strands}")
        self._submit = submit
        self._max_strands = max_strands
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # rounds ending
        self._local = threading.local()
        self.root = self._new_strand(None)
        self._owner: Strand | None = self.root
        self._line: deque[Strand] = deque()
        # strands that may still trace: the owner, those in line, those running a step without
        # the baton; not those waiting for values or for their branches, nor ended ones
        self._active = 1
        self._round = _Round()

    def strand(self) -> Strand:
        """The calling thread's strand."""
        return getattr(self._local, "strand", None) or self.root

    def fork(self, tasks: Sequence[Callable[[], Any]]) -> list[Outcome]:
        """Each task's outcome, run as a strand of its own (one task: here) while this strand
        waits; at most `max_strands` at once, in order. A task's exception other than an
        `Exception` (Ctrl-C) is raised here."""
        step = self._max_strands
        if len(tasks) > step:
            return [o for at in range(0, len(tasks), step) for o in self.fork(tasks[at : at + step])]
        if len(tasks) == 1:
            try:
                return [Outcome(tasks[0]())]
            except Exception as exc:  # noqa: BLE001 (the caller decides)
                return [Outcome(error=exc)]
        parent = self.strand()
        children = [self._new_strand(parent) for _ in tasks]
        outcomes: list[Outcome] = [Outcome()] * len(tasks)
        # LangChain's config and the tracer's flags travel in context variables: a copy each
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(self._strand_main, child, task, outcomes, i),
                daemon=True,
            )
            for i, (child, task) in enumerate(zip(children, tasks, strict=True))
        ]
        with self._cv:
            parent.branches_left = len(children)
            self._line.extendleft(reversed(children))
            self._active += len(children) - 1  # the parent waits for them
            self._pass()
        for thread in threads:
            thread.start()
        with self._cv:
            _turn(parent).wait_for(lambda: self._owner is parent)
        for outcome in outcomes:
            if outcome.error is not None and not isinstance(outcome.error, Exception):
                raise outcome.error
        return outcomes

    @contextmanager
    def waiting(self, variables: Sequence[SemanticVariable]) -> Iterator[None]:
        """Around a step that needs `variables`' values: gives the baton up until the round that
        submits them has their values, runs the block without it, then takes it back. Raises
        the submission's error, or that of a variable that failed."""
        strand = self.strand()
        with self._cv:
            round_ = self._round
            round_.wanted.update({v.id: v for v in variables})
            round_.waiters += 1
            self._active -= 1
            self._maybe_submit()
            self._pass()
            self._cv.wait_for(lambda: round_.done)
        try:
            round_.raise_for(variables)
            yield
        finally:
            self._take_back(strand)

    @contextmanager
    def released(self) -> Iterator[None]:
        """A block run without the baton (a step on the client): other strands trace meanwhile."""
        strand = self.strand()
        with self._cv:
            self._pass()
        try:
            yield
        finally:
            self._take_back(strand)

    # -- helpers (under self._cv) ----------------------------------------------------------------

    def _strand_main(
        self, strand: Strand, task: Callable[[], Any], outcomes: list[Outcome], i: int
    ) -> None:
        self._local.strand = strand
        with self._cv:
            _turn(strand).wait_for(lambda: self._owner is strand)
        try:
            outcomes[i] = Outcome(task())
        except BaseException as exc:  # handed to the parent by `fork`
            outcomes[i] = Outcome(error=exc)
        finally:
            self._end(strand)

    def _end(self, strand: Strand) -> None:
        """`strand` (holding the baton) is done: it counts as tracing no more."""
        parent = strand.parent
        assert parent is not None
        with self._cv:
            parent.waited += strand.waited
            self._active -= 1
            parent.branches_left -= 1
            if parent.branches_left == 0:  # the fork returns before anything else traces
                self._active += 1
                self._line.appendleft(parent)
            self._maybe_submit()
            self._pass()

    def _maybe_submit(self) -> None:
        """When no strand may trace any more and some wait, submit their round (the caller
        holds the baton, so the tracer's state is its own meanwhile)."""
        round_ = self._round
        if self._active or not round_.waiters:
            return
        self._round = _Round()
        try:
            round_.errors = self._submit(list(round_.wanted.values()))
        except BaseException as exc:  # noqa: BLE001 (each waiter raises it)
            round_.failure = exc
        round_.done = True
        self._active = round_.waiters  # all at once: none submits a round alone
        self._cv.notify_all()

    def _pass(self) -> None:
        """Give the baton up, to the strand first in line."""
        self._owner = self._line.popleft() if self._line else None
        if self._owner is not None:
            _turn(self._owner).notify()

    def _take_back(self, strand: Strand) -> None:
        with self._cv:
            if self._owner is None:
                self._owner = strand
                return
            self._line.append(strand)
            _turn(strand).wait_for(lambda: self._owner is strand)

    def _new_strand(self, parent: Strand | None) -> Strand:
        return Strand(parent, turn=threading.Condition(self._lock))


def _turn(strand: Strand) -> threading.Condition:
    assert strand.turn is not None
    return strand.turn
