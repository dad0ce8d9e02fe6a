"""map_reduce: summarize an arXiv paper with one map call per chunk and one reduce call.

Metric: job completion time (the reduce output awaited with criterion "latency").
"""

from __future__ import annotations

from benchmarks.common import data
from benchmarks.common.apps import map_reduce_job, mean_latency
from benchmarks.common.graph import Scenario
from benchmarks.common.workload import Metric, ModeResults, Target, Workload

QUICK = {"chunks": 6, "chunk_chars": 1200, "map_tokens": 32, "reduce_tokens": 48}
FULL = {"chunks": 16, "chunk_chars": 2000, "map_tokens": 48, "reduce_tokens": 96}


def scenarios(quick: bool) -> list[Scenario]:
    size = QUICK if quick else FULL
    chunks = data.chunks(data.paper(0), size["chunk_chars"], size["chunks"])
    job = map_reduce_job("paper0", chunks, size["map_tokens"], size["reduce_tokens"])
    return [Scenario("map_reduce", (job,), notes=size)]


def metrics(results: ModeResults) -> dict[str, float]:
    return {"jct": mean_latency(results.get("map_reduce"))}


WORKLOAD = Workload(
    name="map_reduce",
    summary="map calls over an arXiv paper's chunks, then one reduce; job completion time",
    scenarios=scenarios,
    metrics=metrics,
    metric_specs=(Metric("jct", "s"),),
    baselines=("baseline_throughput", "baseline_latency"),
    ablations=("task_groups", "objective_deduction", "app_scheduler", "prefix_sharing"),
    targets=(
        Target("JCT vs latency-tuned", "jct", "baseline_latency", minimum=2.0),
        Target("JCT vs throughput-tuned", "jct", "baseline_throughput", minimum=1.3),
    ),
)
