"""What a client submits at once: new variables, new calls and the variables it awaits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from parrot_bridge.template import Template
from server.graph.call import Sampling

Criteria = Literal["latency", "throughput"]


@dataclass(frozen=True, slots=True)
class VariableDecl:
    id: str
    name: str | None = None
    value: str | None = None


@dataclass(frozen=True, slots=True)
class CallDecl:
    """A call as submitted: the template as text, and `parsed` where it was parsed ahead (off
    the event loop: a 2,000-call submission spent ~0.1 s parsing); else it is parsed, and its
    errors reported, during validation. `error`: why the call cannot run (its sampling options
    cannot be followed); it is added failed, with its dependents, and the rest applies."""

    id: str
    template: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    sampling: Sampling = field(default_factory=Sampling)
    function: str | None = None
    add_special_tokens: bool = True
    parsed: Template | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    variables: list[VariableDecl] = field(default_factory=list)
    calls: list[CallDecl] = field(default_factory=list)
    awaits: dict[str, Criteria] = field(default_factory=dict)
