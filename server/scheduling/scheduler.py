"""The server's queue of ready calls: ordering by a policy, admission by engine capacity. Pure.

Ordering and admission are apart: the policy sorts units of work (a call, or the ready members
of a task group, which are admitted together onto one engine); admission stops at the first unit
no engine has room for, so later work never overtakes it. A unit that waits for the full engine
holding its prefix (see `choose_engine`) is passed over instead: later units may use the engines
with room that it declined, while the holder's next free slot is still its own (it comes first
in every admission pass).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server.scheduling.placement import EngineLoad, choose_engine
from server.scheduling.policy import OrderingPolicy

P = TypeVar("P")

# How many units waiting for their holders one admission pass looks past: each costs an
# affinity lookup, and a queue of hundreds of calls filled ahead on one full engine would
# otherwise be walked whole on every call that ends.
MAX_PASSED_OVER = 32


@dataclass(eq=False, slots=True)
class WorkItem(Generic[P]):
    """A ready call waiting for an engine; `group` names its task group (None: alone)."""

    payload: P
    priority: int
    cost_tokens: int
    group: str | None = None
    arrival: int = 0


@dataclass(slots=True)
class Admission(Generic[P]):
    engine: int
    items: list[WorkItem[P]] = field(default_factory=list)


class CallScheduler(Generic[P]):
    """Queued units in policy order, kept in a heap: the executor admits on every call that
    ends, and sorting the whole queue each time made a server with hundreds of queued calls
    spend most of its time there (quadratic in the calls queued)."""

    def __init__(self, policy: OrderingPolicy, max_calls_per_engine: int) -> None:
        if max_calls_per_engine < 1:
            raise ValueError(f"max_calls_per_engine must be >= 1, got {max_calls_per_engine}")
        self.policy = policy
        self.max_calls_per_engine = max_calls_per_engine
        # queued units by name (a group's name, or the item of a lone call), items in arrival
        # order, and each unit's order: (policy key of its first member, creation sequence)
        self._units: dict[object, list[WorkItem[P]]] = {}
        self._order: dict[object, tuple[tuple[int, ...], int]] = {}
        # (order, push, name) entries; those whose order is no longer their unit's are stale
        # (the unit was admitted, or a member with an earlier key joined it) and dropped when
        # they come to the top
        self._heap: list[tuple[tuple[tuple[int, ...], int], int, object]] = []
        self._size = 0
        self._arrivals = itertools.count()
        self._sequence = itertools.count()  # units in creation order: ties go to the older
        self._pushes = itertools.count()  # heap entries never compare their names

    def __len__(self) -> int:
        return self._size

    def add(self, item: WorkItem[P]) -> None:
        item.arrival = next(self._arrivals)
        name: object = item.group if item.group is not None else item
        self._units.setdefault(name, []).append(item)
        self._size += 1
        key = self.policy.key(item.priority, item.arrival)
        order = self._order.get(name)
        if order is None or key < order[0]:
            self._push(name, (key, order[1] if order is not None else next(self._sequence)))

    def raise_priority(self, item: WorkItem[P], priority: int) -> None:
        """A queued item is more urgent now (its output was awaited since it was queued): it,
        and the unit it belongs to, move up to where that priority puts them."""
        if priority >= item.priority:
            return
        item.priority = priority
        name: object = item.group if item.group is not None else item
        order = self._order.get(name)
        if order is None or not any(member is item for member in self._units[name]):
            raise ValueError("the item is not queued")
        key = self.policy.key(priority, item.arrival)
        if key < order[0]:
            self._push(name, (key, order[1]))

    def remove_if(self, predicate: Callable[[P], bool]) -> list[WorkItem[P]]:
        """Take queued items whose payload matches (e.g. of a closed session)."""
        gone: list[WorkItem[P]] = []
        for name, unit in list(self._units.items()):
            kept = [item for item in unit if not predicate(item.payload)]
            if len(kept) == len(unit):
                continue
            gone += [item for item in unit if predicate(item.payload)]
            if kept:
                self._units[name] = kept
                key = min(self.policy.key(i.priority, i.arrival) for i in kept)
                self._order[name] = (key, self._order[name][1])
            else:
                del self._units[name], self._order[name]
        if gone:
            self._size -= len(gone)
            self._heap = [(order, next(self._pushes), name) for name, order in self._order.items()]
            heapq.heapify(self._heap)
        return gone

    def admit(
        self,
        loads: list[EngineLoad],
        affinity: Callable[[list[WorkItem[P]]], Mapping[int, int]],
    ) -> list[Admission[P]]:
        """Take units off the queue in policy order while an engine takes them; `loads` is
        updated with what is admitted. `affinity(unit)` says which engines hold its prefix."""
        admissions: list[Admission[P]] = []
        by_index = {load.index: load for load in loads}
        passed_over: list[tuple[tuple[tuple[int, ...], int], int, object]] = []
        while len(passed_over) < MAX_PASSED_OVER and (name := self._head()) is not None:
            if all(load.running_calls >= self.max_calls_per_engine for load in loads):
                break
            unit = self._units[name]
            engine = choose_engine(loads, affinity(unit), self.max_calls_per_engine)
            entry = heapq.heappop(self._heap)
            if engine is None:  # it waits for its full holder while another engine has room
                passed_over.append(entry)
                continue
            del self._units[name], self._order[name]
            self._size -= len(unit)
            load = by_index[engine]
            load.running_calls += len(unit)
            load.queued_tokens += sum(item.cost_tokens for item in unit)
            admissions.append(Admission(engine, unit))
        for entry in passed_over:
            heapq.heappush(self._heap, entry)
        return admissions

    def _head(self) -> object | None:
        """The name of the first unit in policy order (None: the queue is empty)."""
        while self._heap:
            order, _, name = self._heap[0]
            if self._order.get(name) == order:
                return name
            heapq.heappop(self._heap)
        return None

    def _push(self, name: object, order: tuple[tuple[int, ...], int]) -> None:
        self._order[name] = order
        heapq.heappush(self._heap, (order, next(self._pushes), name))
