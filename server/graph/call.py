"""A semantic call: a parsed template, the variables bound to its slots, and sampling settings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from parrot_bridge.template import Input, Output, Segment, Template


class CallState(enum.Enum):
    WAITING = "waiting"  # some inputs have no value yet
    READY = "ready"  # all inputs set; waiting for the executor
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Sampling:
    """How a call's outputs are sampled (engine-independent)."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0  # OpenAI's, in [-2, 2]
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    # constrained output: a JSON schema (as JSON text, so the settings stay hashable) that each
    # output's text follows, strings one of which each output is exactly, a regular expression
    # each output matches whole, or a GBNF grammar (root rule `root`) each output is a sentence of
    json_schema: str | None = None
    choices: tuple[str, ...] | None = None
    regex: str | None = None
    grammar: str | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def constrained(self) -> bool:
        return any(c is not None for c in self._constraints)

    @property
    def _constraints(self) -> tuple[object, ...]:
        return (self.json_schema, self.choices, self.regex, self.grammar)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if sum(c is not None for c in self._constraints) > 1:
            raise ValueError("give one of json_schema, choices, regex and grammar, not several")
        if self.constrained and self.ignore_eos:
            raise ValueError("constrained output ends when it is complete: no ignore_eos")
        if self.choices is not None and not (self.choices and all(self.choices)):
            raise ValueError("choices must be non-empty strings")
        for token, bias in self.logit_bias:
            if token < 0 or not -100.0 <= bias <= 100.0:
                raise ValueError(
                    f"logit_bias maps token ids (>= 0) to biases in [-100, 100], got {token}: {bias}"
                )


@dataclass(eq=False, slots=True)
class Call:
    """One node of work. `inputs`/`outputs` map template names to variable ids.

    The segments stay explicit (constant text, input slots, output slots) so that later stages
    can key prefixes by segment without re-parsing text.
    """

    id: str
    template: Template
    inputs: dict[str, str]
    outputs: dict[str, str]
    sampling: Sampling = field(default_factory=Sampling)
    function: str | None = None
    # the prompt starts with the tokenizer's BOS where it adds one, as a completion's does;
    # false for a prompt rendered by a chat template, which writes what it wants
    add_special_tokens: bool = True
    state: CallState = CallState.WAITING
    error: str | None = None
    missing: set[str] = field(default_factory=set)  # input variable ids without a value yet
    requeued: int = 0  # times it went back to READY after its engine died under it

    @property
    def label(self) -> str:
        """How error messages name this call."""
        return f"{self.id!r} ({self.function})" if self.function else repr(self.id)

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.template.segments

    def variable_of(self, segment: Input | Output) -> str:
        """The id of the variable bound to an input or output slot."""
        return (self.inputs if isinstance(segment, Input) else self.outputs)[segment.name]
