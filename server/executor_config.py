"""What the executor does with a session's graph: which optimisations run, and their limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.prefix_store import PrefixStoreConfig
from server.session_plan import PlanSwitches


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    enable_prefix_sharing: bool = True
    min_shared_prefix_tokens: int = 16
    objective_deduction: bool = True
    task_groups: bool = True
    pipelined_prefill: bool = True
    app_scheduling: bool = True
    max_calls_per_engine: int = 256
    # after a latency-critical output that a latency-critical call reads, the engine keeps its
    # latency cap this long for that call to arrive (0: off; see Scheduler.hold_latency)
    latency_hold_s: float = 0.1
    # a pipelined prefill computes at most this many tokens a step while latency-critical
    # work decodes (0: no limit), riding along its steps instead of stalling them
    pipelined_prefill_chunk: int = 8
    # tokens left out at the end of a prefix filled from a boundary's text alone: their text
    # touches the boundary and may tokenize differently once the input follows
    boundary_trim_tokens: int = 2
    prefix_store: PrefixStoreConfig = field(default_factory=PrefixStoreConfig)

    def __post_init__(self) -> None:
        if self.min_shared_prefix_tokens < 1:
            raise ValueError(
                f"min_shared_prefix_tokens must be >= 1, got {self.min_shared_prefix_tokens}"
            )
        if self.max_calls_per_engine < 1:
            raise ValueError(f"max_calls_per_engine must be >= 1, got {self.max_calls_per_engine}")
        if self.boundary_trim_tokens < 0:
            raise ValueError(f"boundary_trim_tokens must be >= 0, got {self.boundary_trim_tokens}")
        if self.pipelined_prefill_chunk < 0:
            raise ValueError(
                f"pipelined_prefill_chunk must be >= 0, got {self.pipelined_prefill_chunk}"
            )
        if self.latency_hold_s < 0:
            raise ValueError(f"latency_hold_s must be >= 0, got {self.latency_hold_s}")

    @property
    def switches(self) -> PlanSwitches:
        return PlanSwitches(self.objective_deduction, self.task_groups, self.app_scheduling)
