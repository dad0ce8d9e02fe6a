"""shared_prompt: GPTs-style apps (the four shapes of gpts-top4.json, scaled down). Many users
send short queries to apps whose long system prompt is the same for all users of an app; every
user is a separate client (a Parrot session of its own).

Metrics: throughput (requests per second over the run), goodput (requests per second that met
the per-output-token latency bound) and mean latency.
"""

from __future__ import annotations

import random

from benchmarks.common import data
from benchmarks.common.apps import makespan, mean_latency, single_call_job
from benchmarks.common.graph import Scenario
from benchmarks.common.workload import Metric, ModeResults, Target, Workload

# prompt and output lengths of gpts-top4.json divided by these; users arrive as a Poisson stream
QUICK = {"users": 12, "prompt_scale": 6, "output_scale": 16, "rate_per_s": 4.0}
FULL = {"users": 48, "prompt_scale": 3, "output_scale": 8, "rate_per_s": 4.0}
# goodput counts requests whose latency per requested output token is at most this
BOUND_S_PER_TOKEN = 1.0
QUERIES = (
    "Plan my week.", "Draw a red fox.", "Fix my loop.", "Plot sales by month.",
    "Summarize this email.", "Make a logo.", "Explain recursion.", "Find outliers.",
)  # fmt: skip


def scenarios(quick: bool) -> list[Scenario]:
    size = QUICK if quick else FULL
    shapes = data.app_shapes()
    source = data.paper(3)
    systems = {}
    for i, shape in enumerate(shapes):
        chars = shape.prompt_tokens // size["prompt_scale"] * data.CHARS_PER_TOKEN
        start = i * 12000
        systems[shape.name] = (
            f"You are the {shape.name} assistant. Follow the guidelines below, which are the same "
            f"for every user of this app.\n\n{source[start : start + chars]}"
        )
    rng = random.Random(0)
    jobs = []
    t = 0.0
    for u in range(size["users"]):
        shape = rng.choices(shapes, weights=[s.share for s in shapes])[0]
        tokens = max(8, shape.output_tokens // size["output_scale"])
        jobs.append(
            single_call_job(f"user{u}", shape.name, systems[shape.name], "",
                            tokens, "latency", t, user_as_input=rng.choice(QUERIES))
        )  # fmt: skip
        t += rng.expovariate(size["rate_per_s"])
    return [Scenario("users", tuple(jobs), notes=size)]


def metrics(results: ModeResults) -> dict[str, float]:
    jobs = results.get("users")
    span = makespan(jobs)
    if not jobs:
        return {}
    good = [j for j in jobs if j.latency_s / max(1, j.requested_tokens) <= BOUND_S_PER_TOKEN]
    return {
        "throughput": len(jobs) / span,
        "goodput": len(good) / span,
        "mean_latency": mean_latency(jobs),
    }


WORKLOAD = Workload(
    name="shared_prompt",
    summary="GPTs-style apps: many users share each app's long system prompt",
    scenarios=scenarios,
    metrics=metrics,
    metric_specs=(Metric("throughput", "req/s", higher_is_better=True),
                  Metric("goodput", "req/s", higher_is_better=True),
                  Metric("mean_latency", "s")),  # fmt: skip
    baselines=("baseline_throughput", "baseline_no_cache", "baseline_latency"),
    ablations=("prefix_sharing", "cascade", "prefix_cache", "app_scheduler"),
    targets=(
        Target("throughput vs prefix cache off", "throughput", "baseline_no_cache", minimum=8.0),
        Target("throughput vs prefix cache on", "throughput", "baseline_throughput", minimum=1.5),
    ),
)
