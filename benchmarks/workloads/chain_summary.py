"""chain_summary: refine-style summary chain over an arXiv paper's chunks, alone and while other
clients send background summarization requests (criterion "throughput" in Parrot).

Metrics: end-to-end latency of the chain alone, under background load, and under a light one.
The load's requests arrive over about the chain's own run (a mean gap of `bg_every_s`), so that
it lasts while the chain runs; the light load spreads the same requests three times wider (the
load of the workload's first version, set when the chain took three times longer: now most of
it arrives after the chain has ended).
"""

from __future__ import annotations

import random

from benchmarks.common import data
from benchmarks.common.apps import SUMMARIZER, chain_job, mean_latency, single_call_job
from benchmarks.common.graph import Job, Scenario
from benchmarks.common.workload import Metric, ModeResults, Target, Workload

QUICK = {"chunks": 4, "chunk_chars": 1000, "tokens": 32,
         "background": 6, "bg_every_s": 0.5, "bg_chars": 2400, "bg_tokens": 48}
FULL = {"chunks": 8, "chunk_chars": 1600, "tokens": 48,
        "background": 24, "bg_every_s": 0.5, "bg_chars": 2400, "bg_tokens": 64}  # fmt: skip
LIGHT = 3.0  # the light load's gaps, in units of bg_every_s


def scenarios(quick: bool) -> list[Scenario]:
    size = QUICK if quick else FULL
    chain = chain_job("chain", data.chunks(data.paper(1), size["chunk_chars"], size["chunks"]),
                      size["tokens"])  # fmt: skip
    return [
        Scenario("alone", (chain,), all_modes=False, notes=size),
        Scenario("background", (chain, *background_jobs(size, size["bg_every_s"])), notes=size),
        Scenario("light_background",
                 (chain, *background_jobs(size, LIGHT * size["bg_every_s"])), all_modes=False,
                 notes={**size, "bg_every_s": LIGHT * size["bg_every_s"]}),
    ]  # fmt: skip


def background_jobs(size: dict, every_s: float) -> list[Job]:
    """Single summarization calls of other clients, arriving at random (Poisson) gaps of mean
    `every_s` from the chain's start; the same pieces and the same draws at every rate."""
    rng = random.Random(0)
    pieces = data.chunks(data.paper(2), size["bg_chars"], size["background"])
    jobs, t = [], 0.0
    for i, piece in enumerate(pieces):
        jobs.append(
            single_call_job(f"bg{i}", "background", SUMMARIZER,
                            "Summarize this part of a research paper.\n\n", size["bg_tokens"],
                            "throughput", t, user_as_input=piece)
        )  # fmt: skip
        t += rng.expovariate(1 / every_s)
    return jobs


def metrics(results: ModeResults) -> dict[str, float]:
    return {
        "latency_alone": mean_latency(results.get("alone"), "chain_summary"),
        "latency_loaded": mean_latency(results.get("background"), "chain_summary"),
        "bg_latency": mean_latency(results.get("background"), "background"),
        "latency_light": mean_latency(results.get("light_background"), "chain_summary"),
    }


WORKLOAD = Workload(
    name="chain_summary",
    summary="refine-style summary chain over a paper, alone and under background requests",
    scenarios=scenarios,
    metrics=metrics,
    metric_specs=(Metric("latency_alone", "s"), Metric("latency_loaded", "s"),
                  Metric("bg_latency", "s"), Metric("latency_light", "s")),  # fmt: skip
    baselines=("baseline_throughput", "baseline_latency"),
    ablations=(
        "pipelined_prefill", "objective_deduction", "app_scheduler", "background_chunks",
        "latency_hold", "ride_along", "step_pausing",
    ),
    targets=(
        Target("loaded latency vs throughput-tuned", "latency_loaded", "baseline_throughput",
               minimum=2.0),
        Target("loaded latency vs latency-tuned", "latency_loaded", "baseline_latency",
               minimum=2.0),
    ),  # fmt: skip
)
