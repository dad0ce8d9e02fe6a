"""Objective deduction: which calls are on a latency-critical path, which are bulk work.

Pure. The client awaits variables with a criterion; every call upstream of an awaited variable
inherits that criterion. Latency wins where both reach a call (a shared upstream call delays the
latency-critical result). Calls that nothing awaits (yet) have no objective.
"""

from __future__ import annotations

import enum

from server.graph import Graph


class Objective(enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    NONE = "none"  # nothing awaited downstream (yet)


def deduce_objectives(graph: Graph) -> dict[str, Objective]:
    """The objective of every call of `graph`, by call id, walking back from its awaits."""
    objectives = {call_id: Objective.NONE for call_id in graph.calls}
    for criteria in (Objective.LATENCY, Objective.THROUGHPUT):
        roots = [v for v, c in graph.awaits.items() if c == criteria.value]
        for call_id in _upstream_calls(graph, roots):
            if objectives[call_id] is Objective.NONE:
                objectives[call_id] = criteria
    return objectives


def raise_objectives(
    graph: Graph, objectives: dict[str, Objective], var_id: str, criteria: str
) -> None:
    """Take one more awaited variable into `objectives` (as `deduce_objectives` gave them):
    its upstream calls get its objective where theirs is weaker. The walk stops at calls that
    have it (or latency) already: their upstream has it too. Only for a new await; a changed
    criterion may lower objectives, which needs `deduce_objectives`."""
    objective = Objective(criteria)
    var = graph.variables.get(var_id)
    stack = [var.producer] if var is not None else []
    while stack:
        call_id = stack.pop()
        if call_id is None or objectives.get(call_id) in (Objective.LATENCY, objective):
            continue
        objectives[call_id] = objective
        stack.extend(graph.variables[v].producer for v in graph.calls[call_id].inputs.values())


def _upstream_calls(graph: Graph, var_ids: list[str]) -> list[str]:
    """Producers of `var_ids` and, transitively, of their inputs (each once)."""
    seen: set[str] = set()
    order: list[str] = []
    stack = [graph.variables[v].producer for v in var_ids if v in graph.variables]
    while stack:
        call_id = stack.pop()
        if call_id is None or call_id in seen:
            continue
        seen.add(call_id)
        order.append(call_id)
        stack.extend(graph.variables[v].producer for v in graph.calls[call_id].inputs.values())
    return order
