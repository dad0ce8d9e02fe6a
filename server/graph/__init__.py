"""The call graph: Semantic Variables, calls, submissions and their validation. Pure data."""

from server.graph.call import Call, CallState, Sampling
from server.graph.errors import GraphError
from server.graph.graph import Graph
from server.graph.submission import CallDecl, Criteria, Submission, VariableDecl
from server.graph.variable import Generation, Variable, VariableState

__all__ = [
    "Call",
    "CallDecl",
    "CallState",
    "Criteria",
    "Graph",
    "GraphError",
    "Sampling",
    "Submission",
    "Generation",
    "Variable",
    "VariableDecl",
    "VariableState",
]
