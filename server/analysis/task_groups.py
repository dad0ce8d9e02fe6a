"""Task groups: calls whose outputs feed the same consumers together (a map stage).

Pure. Such calls only matter as a whole (the consumer starts when the last one ends), so they
are admitted together onto one engine and batched, and their objective is the group's completion.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.graph import Graph


@dataclass(frozen=True, slots=True)
class TaskGroup:
    """`members` (call ids, sorted) all feed exactly the calls `consumers`."""

    id: str
    members: tuple[str, ...]
    consumers: tuple[str, ...]


def find_task_groups(graph: Graph, min_size: int = 2) -> dict[str, TaskGroup]:
    """The task group of each grouped call, by call id.

    Calls are grouped when the sets of calls reading their outputs are equal and non-empty; a
    chain step (read by the next step and by a later one) differs from its successor's set, so
    sequential calls never share a group.
    """
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2, got {min_size}")
    by_consumers: dict[tuple[str, ...], list[str]] = {}
    for call_id, call in graph.calls.items():
        consumers = sorted({c for v in call.outputs.values() for c in graph.variables[v].consumers})
        if consumers:
            by_consumers.setdefault(tuple(consumers), []).append(call_id)
    groups: dict[str, TaskGroup] = {}
    for consumers, members in by_consumers.items():
        if len(members) < min_size:
            continue
        group = TaskGroup("group:" + ",".join(consumers), tuple(sorted(members)), consumers)
        for call_id in members:
            groups[call_id] = group
    return groups
