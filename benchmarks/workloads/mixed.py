"""mixed: a latency-critical chat app and a bulk map-reduce app on one server at once.

Metrics: chat latency and map-reduce completion time, together and each alone (same mode),
and the chat latency over the chats that overlapped the map-reduce (started before it ended).
The chats arrive while the map-reduce runs: the last starts before the throughput-tuned
baseline's map-reduce alone ends (--quick: ~3.7 s with SmolLM2). Alone, the same chats arrive
at the same times. In Parrot the chat outputs are awaited with "latency", the map-reduce result
with "throughput".
"""

from __future__ import annotations

import math

from benchmarks.common import data
from benchmarks.common.apps import ASSISTANT, map_reduce_job, mean_latency, single_call_job
from benchmarks.common.graph import JobResult, Scenario
from benchmarks.common.workload import Metric, ModeResults, Target, Workload

# chats start at chat_start_s, then every chat_every_s: the last at 3.3 s (quick), 8.0 s (full)
QUICK = {"chats": 5, "chat_start_s": 0.5, "chat_every_s": 0.7, "chat_tokens": 24, "chunks": 6,
         "chunk_chars": 1200, "map_tokens": 32, "reduce_tokens": 32}
FULL = {"chats": 16, "chat_start_s": 0.5, "chat_every_s": 0.5, "chat_tokens": 48, "chunks": 16,
        "chunk_chars": 2000, "map_tokens": 48, "reduce_tokens": 64}  # fmt: skip
QUESTIONS = (
    "What is a hash table?", "How do I reverse a list in Python?", "What causes rain?",
    "Name three prime numbers.", "What is the capital of France?", "Explain what a CPU does.",
)  # fmt: skip


def scenarios(quick: bool) -> list[Scenario]:
    size = QUICK if quick else FULL
    chats = tuple(
        single_call_job(f"chat{i}", "chat", ASSISTANT, "", size["chat_tokens"], "latency",
                        size["chat_start_s"] + i * size["chat_every_s"],
                        user_as_input=QUESTIONS[i % len(QUESTIONS)])
        for i in range(size["chats"])
    )  # fmt: skip
    chunks = data.chunks(data.paper(4), size["chunk_chars"], size["chunks"])
    mr = map_reduce_job("mr", chunks, size["map_tokens"], size["reduce_tokens"], "throughput")
    return [
        Scenario("chat_alone", chats, all_modes=False, notes=size),
        Scenario("mr_alone", (mr,), all_modes=False, notes=size),
        Scenario("mixed", (mr, *chats), notes=size),
    ]


def metrics(results: ModeResults) -> dict[str, float]:
    chat = mean_latency(results.get("mixed"), "chat")
    chat_alone = mean_latency(results.get("chat_alone"), "chat")
    mr = mean_latency(results.get("mixed"), "map_reduce")
    mr_alone = mean_latency(results.get("mr_alone"), "map_reduce")
    return {
        "chat_latency": chat,
        "chat_overlap_latency": overlap_chat_latency(results.get("mixed")),
        "chat_slowdown": _ratio(chat, chat_alone),
        "mr_jct": mr,
        "mr_slowdown": _ratio(mr, mr_alone),
    }


def overlap_chat_latency(jobs: list[JobResult] | None) -> float:
    """Mean latency of the chats that started before the map-reduce ended (in that run)."""
    mr_end = max((j.end_s for j in jobs or [] if j.app == "map_reduce"), default=math.nan)
    return mean_latency([j for j in jobs or [] if j.app == "chat" and j.start_s < mr_end])


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(b) else math.nan


WORKLOAD = Workload(
    name="mixed",
    summary="latency-critical chat and bulk map-reduce at once, each against running alone",
    scenarios=scenarios,
    metrics=metrics,
    metric_specs=(Metric("chat_latency", "s"), Metric("chat_overlap_latency", "s"),
                  Metric("chat_slowdown", "x alone"),
                  Metric("mr_jct", "s"), Metric("mr_slowdown", "x alone")),  # fmt: skip
    baselines=("baseline_throughput", "baseline_latency"),
    ablations=("objective_deduction", "app_scheduler", "task_groups", "background_chunks",
               "ride_along", "step_pausing"),
    targets=(
        Target("chat latency, mixed / alone", "chat_slowdown", maximum=1.2),
        Target("map-reduce JCT gain vs throughput-tuned (>= 1/1.2)", "mr_jct",
               "baseline_throughput", minimum=1 / 1.2),
    ),  # fmt: skip
)
