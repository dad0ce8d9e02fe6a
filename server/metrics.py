"""Counters kept by the server and their Prometheus text rendering. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.gc_pauses import GcPauses
from server.histogram import Histogram, escape_label_value

if TYPE_CHECKING:
    from server.engine import EngineStats


@dataclass(slots=True)
class Family:
    """One metric family: a name, a type, help text, and samples by label values."""

    name: str
    kind: str  # "counter" | "gauge"
    help: str
    labels: tuple[str, ...] = ()
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = self._key(labels)
        self.samples[key] = self.samples.get(key, 0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.samples[self._key(labels)] = value

    def value(self, **labels: str) -> float:
        return self.samples.get(self._key(labels), 0)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labels)


class Metrics:
    """The server's own counters; engine counters are read at scrape time and merged in."""

    def __init__(self) -> None:
        self.prompt_tokens = Family(
            "parrot_prompt_tokens_total", "counter", "Prompt tokens of all calls and requests."
        )
        # tokens a forked call did not compute because its parent context held them
        self.fork_cached_tokens = Family(
            "parrot_fork_cached_tokens_total",
            "counter",
            "Prompt tokens of calls forked from a prefix context that an earlier call's fill "
            "computed (the fill's first fork is not counted: the fill's tokens are).",
        )
        self.graph_submissions = Family(
            "parrot_graph_submissions_total", "counter", "Graph submissions applied."
        )
        self.calls = Family(
            "parrot_calls_total", "counter", "Semantic calls finished, by status.", ("status",)
        )
        self.http_requests = Family(
            "parrot_http_requests_total",
            "counter",
            "HTTP requests by route and status code.",
            ("route", "status"),
        )
        self.sessions = Family("parrot_sessions_active", "gauge", "Sessions open now.")
        self.prefix_fills = Family(
            "parrot_prefix_fills_total", "counter", "Shared prefix contexts filled."
        )
        self.prefix_fill_tokens = Family(
            "parrot_prefix_fill_tokens_total",
            "counter",
            "Prompt tokens computed into shared prefix contexts.",
        )
        self.prefix_hits = Family(
            "parrot_prefix_hits_total",
            "counter",
            "Calls forked from a prefix context filled earlier (for another call, or ahead).",
        )
        self.calls_requeued = Family(
            "parrot_calls_requeued_total",
            "counter",
            "Graph calls run again because their engine died before they produced anything.",
        )
        self.engine_restarts = Family(
            "parrot_engine_restarts_total",
            "counter",
            "Engines restarted after their process died (the engine counters go on from "
            "what the dead engine was last seen to count).",
        )
        self.pipelined_prefill_tokens = Family(
            "parrot_pipelined_prefill_tokens_total",
            "counter",
            "Prefix tokens computed for calls whose inputs were not all ready yet.",
        )
        self.pipelined_prefix_uses = Family(
            "parrot_pipelined_prefix_uses_total",
            "counter",
            "Calls that started from a prefix filled before they were ready.",
        )
        self.prefix_store_entries = Family(
            "parrot_prefix_store_entries", "gauge", "Prefix contexts held in the store."
        )
        self.latency_holds = Family(
            "parrot_latency_holds_total",
            "counter",
            "Latency-critical generations after which the engine kept other work to the latency "
            "cap for the latency-critical call reading their output (--latency-hold-ms).",
        )
        self.calls_by_priority = Family(
            "parrot_calls_started_total",
            "counter",
            "Graph calls started, by engine and priority (0 latency-critical, 1 normal, 2 bulk).",
            ("engine", "priority"),
        )
        # plain requests (OpenAI API), one observation per prompt; `api`: completions or chat
        self.request_ttft = Histogram(
            "parrot_request_time_to_first_token_seconds",
            "Plain requests: from arrival to the first generated token.",
            labels=("api",),
        )
        self.request_tpot = Histogram(
            "parrot_request_time_per_output_token_seconds",
            "Plain requests: time between generated tokens after the first, per token.",
            labels=("api",),
        )
        self.request_latency = Histogram(
            "parrot_request_latency_seconds",
            "Plain requests that finished: from arrival to the last token.",
            labels=("api",),
        )
        self.gc_pauses: GcPauses | None = None  # set where the server process starts
        # graph calls, by the priority objective deduction gave them
        self.call_queue = Histogram(
            "parrot_call_queue_seconds",
            "Graph calls: from ready (every input in) to started on an engine, by priority.",
            labels=("priority",),
        )
        self.call_latency = Histogram(
            "parrot_call_latency_seconds",
            "Graph calls that finished: from ready to their last output, by priority.",
            labels=("priority",),
        )

    def render(self, engine: EngineStats) -> str:
        """Prometheus text exposition of server and engine metrics (and the server process's
        garbage-collection pauses, once `gc_pauses` watches them)."""
        cached = Family(
            "parrot_cached_tokens_total",
            "counter",
            "Prompt tokens not computed for the call or request that needed them: found in "
            "the prefix cache, or forked from a prefix another call's fill computed. With "
            "parrot_prefill_tokens_total, each prompt token is counted once.",
        )
        cached.set(engine.cached_tokens + self.fork_cached_tokens.value())
        derived = [
            _single(
                "parrot_prefill_tokens_total",
                "counter",
                "Prompt tokens computed by prefill.",
                engine.prefill_tokens,
            ),
            cached,
            _single(
                "parrot_generated_tokens_total",
                "counter",
                "Tokens generated.",
                engine.generated_tokens,
            ),
            _single(
                "parrot_engine_contexts",
                "gauge",
                "Contexts alive in the engines (the server's, and plain requests').",
                engine.contexts,
            ),
            _single("parrot_engine_jobs", "gauge", "Jobs queued or running in the engines.",
                    engine.jobs),  # fmt: skip
            _single(
                "parrot_preemptions_total",
                "counter",
                "Contexts preempted for KV space.",
                engine.preemptions,
            ),
            _single(
                "parrot_cascade_saved_tokens_total",
                "counter",
                "KV tokens decode attention read once for a shared-prefix group instead of once "
                "per member (per layer).",
                engine.cascade_saved_tokens,
            ),
            _single(
                "parrot_paused_steps_total",
                "counter",
                "Engine steps of other work paused between two layers for latency-critical work.",
                engine.paused_steps,
            ),
            _single(
                "parrot_drafted_tokens_total",
                "counter",
                "Tokens drafted (n-gram lookup, or the text a constraint forces) and verified in a "
                "step (speculative decoding).",
                engine.drafted_tokens,
            ),
            _single(
                "parrot_accepted_draft_tokens_total",
                "counter",
                "Drafted tokens the model confirmed (each saved a decode step of its sequence).",
                engine.accepted_tokens,
            ),
        ]
        # the pool's size is known only while an engine runs (a running engine has blocks):
        # while all restart it is left out, so that the series goes stale, not to a pool of 0
        if engine.total_blocks:
            derived += [
                _single("parrot_kv_free_blocks", "gauge", "Free KV cache blocks.",
                        engine.free_blocks),
                _single("parrot_kv_total_blocks", "gauge", "KV cache blocks in the pool.",
                        engine.total_blocks),
            ]  # fmt: skip
        own = [
            self.prompt_tokens,
            self.fork_cached_tokens,
            self.graph_submissions,
            self.calls,
            self.http_requests,
            self.sessions,
            self.prefix_fills,
            self.prefix_fill_tokens,
            self.prefix_hits,
            self.pipelined_prefill_tokens,
            self.pipelined_prefix_uses,
            self.prefix_store_entries,
            self.calls_by_priority,
            self.latency_holds,
            self.engine_restarts,
            self.calls_requeued,
        ]
        histograms = [
            self.request_ttft,
            self.request_tpot,
            self.request_latency,
            self.call_queue,
            self.call_latency,
        ]
        if self.gc_pauses is not None:
            histograms.append(self.gc_pauses.histogram())
        text = render_families([*own, *derived])
        return text + "".join(line + "\n" for h in histograms for line in h.render())


def render_families(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        samples = fam.samples or ({(): 0.0} if not fam.labels else {})
        for key, value in sorted(samples.items()):
            labels = ",".join(
                f'{name}="{escape_label_value(v)}"'
                for name, v in zip(fam.labels, key, strict=True)
            )
            lines.append(
                f"{fam.name}{{{labels}}} {_number(value)}"
                if labels
                else f"{fam.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _single(name: str, kind: str, help: str, value: float) -> Family:
    fam = Family(name, kind, help)
    fam.set(value)
    return fam


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
