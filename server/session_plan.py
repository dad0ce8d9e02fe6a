"""What the analyses say about a session's calls, recomputed only when its graph changes. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from server.analysis import Objective, TaskGroup, deduce_objectives, find_task_groups
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
        self._objectives: dict[str, Objective] = {}
        self._groups: dict[str, TaskGroup] = {}

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
        if self._version == self.graph.version:
            return
        self._version = self.graph.version
        if self.switches.objective_deduction:
            self._objectives = deduce_objectives(self.graph)
        if self.switches.task_groups:
            self._groups = find_task_groups(self.graph)
