"""A Semantic Variable on the server: one producer (a call or the client), many consumers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class VariableState(enum.Enum):
    PENDING = "pending"  # no value yet
    READY = "ready"
    FAILED = "failed"  # its producer (or something upstream) failed; `error` says why


@dataclass(frozen=True, slots=True)
class Generation:
    """How a call generated an output variable, for usage reports (as an OpenAI response's)."""

    prompt_tokens: int  # the call's prompt up to this output, earlier outputs included
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    # prompt tokens computed before the generation began: shared from a fork's prefix, found
    # in the prefix cache, or filled ahead (pipelined prefill), as a plain request's usage says
    cached_tokens: int = 0


@dataclass(eq=False, slots=True)
class Variable:
    """A node of the graph. `producer` is the id of the call that writes it, if any."""

    id: str
    name: str | None = None
    value: str | None = None
    state: VariableState = VariableState.PENDING
    error: str | None = None
    producer: str | None = None
    consumers: list[str] = field(default_factory=list)
    generation: Generation | None = None  # set with the value of a call's output

    @property
    def label(self) -> str:
        """How error messages name this variable."""
        return f"{self.id!r} ({self.name})" if self.name and self.name != self.id else repr(self.id)
