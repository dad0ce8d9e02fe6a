"""A workload as pure data: jobs made of calls whose inputs are text or other calls' outputs.

The same job runs in every mode: the Parrot runner records it as semantic-function calls in a
session, the baseline runner sends one OpenAI request per call, awaiting what a call depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from parrot_bridge.template import Input, Output, Text, parse_template

Criteria = Literal["latency", "throughput"]


@dataclass(frozen=True, slots=True)
class Ref:
    """An input that is the output of an earlier call of the same job."""

    call: str


@dataclass(frozen=True, slots=True)
class Call:
    """One LLM call: a template with `{{input:x}}` markers that ends with its one
    `{{output:name}}` marker; `inputs` gives each input a text or a `Ref`."""

    name: str
    template: str
    inputs: dict[str, str | Ref]
    max_tokens: int

    def __post_init__(self) -> None:
        parsed = parse_template(self.template)
        if len(parsed.outputs) != 1 or not isinstance(parsed.segments[-1], Output):
            raise ValueError(f"call {self.name!r}: the template must end with its one output")
        if set(parsed.inputs) != set(self.inputs):
            raise ValueError(
                f"call {self.name!r}: template inputs {sorted(parsed.inputs)} != given "
                f"{sorted(self.inputs)}"
            )
        if self.max_tokens < 1:
            raise ValueError(f"call {self.name!r}: max_tokens must be >= 1, got {self.max_tokens}")

    def render(self, values: dict[str, str]) -> str:
        """The prompt: the template's text before the output, inputs filled in."""
        parts = []
        for seg in parse_template(self.template).segments:
            if isinstance(seg, Text):
                parts.append(seg.text)
            elif isinstance(seg, Input):
                parts.append(seg.render(values[seg.name]))  # as the server fills the slot
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Job:
    """One application run (one Parrot session, one client): calls in dependency order, the
    calls whose outputs the application awaits (with its criterion), and when it starts."""

    name: str
    app: str
    calls: tuple[Call, ...]
    awaited: dict[str, Criteria]
    start_s: float = 0.0

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for call in self.calls:
            if call.name in seen:
                raise ValueError(f"job {self.name!r}: two calls named {call.name!r}")
            for key, value in call.inputs.items():
                if isinstance(value, Ref) and value.call not in seen:
                    raise ValueError(
                        f"job {self.name!r}: input {key!r} of {call.name!r} refers to "
                        f"{value.call!r}, which is not an earlier call"
                    )
            seen.add(call.name)
        unknown = [c for c in self.awaited if c not in seen]
        if not self.awaited or unknown:
            raise ValueError(f"job {self.name!r}: awaited calls {unknown or '(none)'} unknown")
        if self.start_s < 0:
            raise ValueError(f"job {self.name!r}: start_s must be >= 0, got {self.start_s}")

    @property
    def output_tokens(self) -> int:
        return sum(c.max_tokens for c in self.calls)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Jobs that run together on one fresh server. `all_modes` False runs it only in the main
    modes (Parrot and the baselines), not in the ablations."""

    name: str
    jobs: tuple[Job, ...]
    all_modes: bool = True
    notes: dict[str, float | int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.jobs:
            raise ValueError(f"scenario {self.name!r} has no jobs")


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one call produced, as the server reported it: its output text and the usage of
    its request (`prompt_tokens`, `completion_tokens`), so modes can be checked to do the same
    work call by call."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class JobResult:
    """When a job started and when its awaited outputs had all arrived (seconds from the
    scenario's start), the text of each awaited output, and the tokens generated for them (the
    completion tokens the server reported; fewer than requested where a call ended at EOS).
    `calls`: every call's result (awaited or not), by call name."""

    name: str
    app: str
    start_s: float
    end_s: float
    outputs: dict[str, str]
    requested_tokens: int = 0  # the sum of its calls' max_tokens
    generated_tokens: int = 0  # the sum of the awaited outputs' completion tokens
    calls: dict[str, CallResult] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s
