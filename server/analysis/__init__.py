"""Pure analyses of a session's call graph: objectives, task groups, prefix keys."""

from server.analysis.objectives import Objective, deduce_objectives, raise_objectives
from server.analysis.prefix_keys import Boundary, boundaries
from server.analysis.task_groups import TaskGroup, find_task_groups

__all__ = [
    "Boundary",
    "Objective",
    "TaskGroup",
    "boundaries",
    "deduce_objectives",
    "find_task_groups",
    "raise_objectives",
]
