"""Ordering policies and the engine priority of a call. Pure.

Engine priorities: lower runs first. Latency-critical calls (0) run with little else in their
batches (the engine's latency token cap limits the other work); plain OpenAI requests and calls
without a known objective are 1; bulk work (throughput objective) is 2.
"""

from __future__ import annotations

from typing import Protocol

from server.analysis.objectives import Objective

LATENCY_PRIORITY = 0
NORMAL_PRIORITY = 1
THROUGHPUT_PRIORITY = 2


def call_priority(objective: Objective, in_task_group: bool) -> int:
    """A call's engine priority from its deduced objective.

    A task group on a latency-critical path is latency-critical as a whole: its members are
    admitted together onto one engine and batched (the latency cap limits other work, never
    latency work), so the group completes as early as possible. `in_task_group` does not change
    the priority; it is taken so that policies can tell groups apart.
    """
    del in_task_group
    if objective is Objective.LATENCY:
        return LATENCY_PRIORITY
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
