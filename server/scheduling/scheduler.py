"""The server's queue of ready calls: ordering by a policy, admission by engine capacity. Pure.

Ordering and admission are apart: the policy sorts units of work (a call, or the ready members
of a task group, which are admitted together onto one engine); admission stops at the first unit
no engine has room for, so later work never overtakes it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server.scheduling.placement import EngineLoad, choose_engine
from server.scheduling.policy import OrderingPolicy

P = TypeVar("P")


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
    def __init__(self, policy: OrderingPolicy, max_calls_per_engine: int) -> None:
        if max_calls_per_engine < 1:
            raise ValueError(f"max_calls_per_engine must be >= 1, got {max_calls_per_engine}")
        self.policy = policy
        self.max_calls_per_engine = max_calls_per_engine
        self._queue: list[WorkItem[P]] = []
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: WorkItem[P]) -> None:
        item.arrival = next(self._arrivals)
        self._queue.append(item)

    def remove_if(self, predicate: Callable[[P], bool]) -> list[WorkItem[P]]:
        """Take queued items whose payload matches (e.g. of a closed session)."""
        gone = [item for item in self._queue if predicate(item.payload)]
        self._queue = [item for item in self._queue if not predicate(item.payload)]
        return gone

    def admit(
        self,
        loads: list[EngineLoad],
        affinity: Callable[[list[WorkItem[P]]], Mapping[int, int]],
    ) -> list[Admission[P]]:
        """Take units off the queue in policy order while an engine has room; `loads` is
        updated with what is admitted. `affinity(unit)` says which engines hold its prefix."""
        admissions: list[Admission[P]] = []
        by_index = {load.index: load for load in loads}
        for unit in self._units():
            engine = choose_engine(loads, affinity(unit), self.max_calls_per_engine)
            if engine is None:
                break
            load = by_index[engine]
            load.running_calls += len(unit)
            load.queued_tokens += sum(item.cost_tokens for item in unit)
            admissions.append(Admission(engine, unit))
            admitted = set(map(id, unit))
            self._queue = [item for item in self._queue if id(item) not in admitted]
        return admissions

    def _units(self) -> list[list[WorkItem[P]]]:
        """Queued items as units in policy order; a group is ordered by its first member."""
        units: dict[object, list[WorkItem[P]]] = {}
        for item in self._queue:
            key: object = item.group if item.group is not None else id(item)
            units.setdefault(key, []).append(item)
        return sorted(
            units.values(),
            key=lambda unit: min(self.policy.key(i.priority, i.arrival) for i in unit),
        )
