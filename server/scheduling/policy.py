"""Ordering policies and the engine priority of a call. Pure.

Engine priorities: lower runs first. Latency-critical calls (0) also run in small batches (the
engine's latency token cap); plain OpenAI requests and calls without a known objective are 1;
bulk work (throughput objective, or a task group that only matters as a whole) is 2.
"""

from __future__ import annotations

from typing import Protocol

from server.analysis.objectives import Objective

LATENCY_PRIORITY = 0
NORMAL_PRIORITY = 1
THROUGHPUT_PRIORITY = 2


def call_priority(objective: Objective, in_task_group: bool) -> int:
    """A call's engine priority from its deduced objective and whether it is in a task group.

    A task group on a latency-critical path is batched whole for its completion time, so it
    runs at normal priority, outside the latency cap, yet ahead of bulk work.
    """
    if objective is Objective.LATENCY:
        return NORMAL_PRIORITY if in_task_group else LATENCY_PRIORITY
    if objective is Objective.THROUGHPUT:
        return THROUGHPUT_PRIORITY
    return NORMAL_PRIORITY


class OrderingPolicy(Protocol):
    """Sort key of a unit of ready work (one call, or a task group admitted together)."""

    name: str

    def key(self, priority: int, arrival: int) -> tuple[int, ...]: ...


class AppPolicy:
    """Application-centric: by engine priority (latency first), then arrival."""

    name = "app"

    def key(self, priority: int, arrival: int) -> tuple[int, ...]:
        return (priority, arrival)


class FifoPolicy:
    """Request-level: first come, first served."""

    name = "fifo"

    def key(self, priority: int, arrival: int) -> tuple[int, ...]:
        return (arrival,)
