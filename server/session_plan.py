"""What the analyses say about a session's calls, recomputed only when its graph changes. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from server.analysis import (
    Objective,
    TaskGroup,
    deduce_objectives,
    find_task_groups,
    raise_objectives,
)
from server.graph import Graph
from server.scheduling import NORMAL_PRIORITY, call_priority


@dataclass(frozen=True, slots=True)
class PlanSwitches:
    """Which analyses apply (each can be turned off for ablation)."""

    objective_deduction: bool = True
    task_groups: bool = True
    app_scheduling: bool = True


class SessionPlan:
    """Objectives, task groups and engine priorities of one graph's calls."""

    def __init__(self, graph: Graph, switches: PlanSwitches) -> None:
        self.graph = graph
        self.switches = switches
        self._version = -1
        self._calls_version = -1
        self._objectives: dict[str, Objective] = {}
        self._groups: dict[str, TaskGroup] = {}
        # the awaits the objectives account for, and how much of the graph's await log
        self._awaits: dict[str, str] = {}
        self._logged = 0

    def objective(self, call_id: str) -> Objective:
        self._refresh()
        return self._objectives.get(call_id, Objective.NONE)

    def group(self, call_id: str) -> TaskGroup | None:
        self._refresh()
        return self._groups.get(call_id)

    def priority(self, call_id: str) -> int:
        """The engine priority of a call (all equal without application-centric scheduling)."""
        if not self.switches.app_scheduling:
            return NORMAL_PRIORITY
        return call_priority(self.objective(call_id), self.group(call_id) is not None)

    def _refresh(self) -> None:
        """Recompute what the graph's changes affect. New awaits alone (a client reading outputs
        one by one) only raise the objectives upstream of them: analysing the whole graph
        again for each made reading N outputs of an N-call graph quadratic."""
        graph = self.graph
        if self._version == graph.version:
            return
        self._version = graph.version
        if self._calls_version != graph.calls_version:
            self._calls_version = graph.calls_version
            if self.switches.task_groups:
                self._groups = find_task_groups(graph)
            self._deduce()
            return
        new = graph.await_log[self._logged :]
        self._logged = len(graph.await_log)
        if not self.switches.objective_deduction:
            return
        if any(self._awaits.get(v, graph.awaits[v]) != graph.awaits[v] for v in new):
            self._deduce()  # a changed criterion may lower objectives
            return
        for var_id in new:
            self._awaits[var_id] = graph.awaits[var_id]
            raise_objectives(graph, self._objectives, var_id, graph.awaits[var_id])

    def _deduce(self) -> None:
        self._logged = len(self.graph.await_log)
        if self.switches.objective_deduction:
            self._objectives = deduce_objectives(self.graph)
            self._awaits = dict(self.graph.awaits)
