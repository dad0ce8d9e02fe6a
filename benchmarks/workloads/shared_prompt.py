"""shared_prompt: GPTs-style apps (the four shapes of gpts-top4.json, scaled down). Many users
send short queries to apps whose long system prompt is the same for all users of an app; every
user is a separate client (a Parrot session of its own).

The same users arrive as a Poisson stream at each rate of a sweep, on a fresh server per rate.
Metrics: throughput at the latency bound (the request rate at which the mean latency per output
token reaches BOUND_S_PER_TOKEN, interpolated between the swept rates), the latency per output
token at each rate, and the mean latency at the base rate (the one the ablations also run).
"""

from __future__ import annotations

import math
import random
import statistics

from benchmarks.common import data
from benchmarks.common.apps import mean_latency, single_call_job
from benchmarks.common.graph import JobResult, Scenario
from benchmarks.common.workload import Bound, Metric, ModeResults, Target, Workload

# prompt and output lengths of gpts-top4.json divided by these
QUICK = {"users": 12, "prompt_scale": 6, "output_scale": 16}
FULL = {"users": 48, "prompt_scale": 3, "output_scale": 8}
# requests per second swept; 0.1 since 2026-11-29: with latency over the tokens generated (not
# asked for), the prefix-cache-off baseline is past the bound already at 0.25/s in the machine's
# slow memory state, and its crossing must lie inside the sweep for the gain to be a number
RATES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
BASE_RATE = 4.0  # the rate every mode, ablations included, runs
# The latency bound: mean seconds per output token. A lone request decodes at ~0.02 s a token
# here, so the bound allows about 5x that for queueing, prefill and larger batches.
BOUND_S_PER_TOKEN = 0.1
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
    users = []  # (app shape, query, gap before it at 1 request/s)
    for _ in range(size["users"]):
        shape = rng.choices(shapes, weights=[s.share for s in shapes])[0]
        users.append((shape, rng.choice(QUERIES), rng.expovariate(1.0)))
    out = []
    for rate in sorted({*RATES, BASE_RATE}):
        jobs, t = [], 0.0
        for u, (shape, query, gap) in enumerate(users):
            tokens = max(8, shape.output_tokens // size["output_scale"])
            jobs.append(
                single_call_job(f"user{u}", shape.name, systems[shape.name], "", tokens,
                                "latency", t, user_as_input=query)
            )  # fmt: skip
            t += gap / rate
        notes = {**size, "rate_per_s": rate}
        out.append(Scenario(_name(rate), tuple(jobs), all_modes=rate == BASE_RATE, notes=notes))
    return out


def metrics(results: ModeResults) -> dict[str, float]:
    per_token = {
        rate: _s_per_token(jobs)
        for rate in sorted({*RATES, BASE_RATE})
        if (jobs := results.get(_name(rate)))
    }
    out = {"throughput": throughput_at_bound(per_token, BOUND_S_PER_TOKEN)}
    out |= {_metric(rate): 1000 * v for rate, v in per_token.items()}
    out["mean_latency"] = mean_latency(results.get(_name(BASE_RATE)))
    return out


def throughput_at_bound(per_token: dict[float, float], bound: float) -> float:
    """The request rate at which the mean latency per output token reaches `bound`: linear
    between the last swept rate within it and the first beyond (the first crossing, should
    the curve come back within the bound at a higher rate). Where the sweep does not bracket
    the crossing the value is a `Bound`: at least the highest rate when all are within, below
    the lowest when even that is beyond. nan with fewer than two rates (the ablations run only
    the base rate)."""
    if len(per_token) < 2:
        return math.nan
    rates = sorted(per_token)
    if per_token[rates[0]] > bound:
        return Bound(rates[0], "<")
    for low, high in zip(rates, rates[1:], strict=False):
        lo_v, hi_v = per_token[low], per_token[high]
        if hi_v > bound:
            return low + (bound - lo_v) * (high - low) / (hi_v - lo_v)
    return Bound(rates[-1], ">=")


def _s_per_token(jobs: list[JobResult]) -> float:
    """Mean latency per output token: over the tokens generated, not the max_tokens asked
    (a call that ends at EOS generated fewer, and its latency covers only those). A job with
    no generated tokens (its usage missing) raises: counted as one token, its mode would look
    far slower than it is."""
    empty = [j.name for j in jobs if j.generated_tokens <= 0]
    if empty:
        raise ValueError(f"jobs without generated tokens (usage missing?): {', '.join(empty)}")
    return statistics.fmean(j.latency_s / j.generated_tokens for j in jobs)


def _name(rate: float) -> str:
    return f"rate_{rate:g}"


def _metric(rate: float) -> str:
    return f"per_token@{rate:g}/s"


WORKLOAD = Workload(
    name="shared_prompt",
    summary="GPTs-style apps: many users share each app's long system prompt",
    scenarios=scenarios,
    metrics=metrics,
    metric_specs=(Metric("throughput", "req/s at the bound", higher_is_better=True),
                  *(Metric(_metric(r), "ms") for r in RATES),
                  Metric("mean_latency", "s")),  # fmt: skip
    baselines=("baseline_throughput", "baseline_no_cache", "baseline_latency"),
    ablations=("prefix_sharing", "cascade", "prefix_cache", "app_scheduler"),
    targets=(
        Target("throughput vs prefix cache off", "throughput", "baseline_no_cache", minimum=8.0),
        Target("throughput vs prefix cache on", "throughput", "baseline_throughput", minimum=1.5),
    ),
)
