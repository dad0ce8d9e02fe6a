"""multi_agent: a four-role software team (multi-agent-roles/*.txt) as one graph with parallel
branches: architect -> 4 programmers (one per file) -> reviewer -> 4 revisers.

Metric: completion time of the team's job (the revised files awaited with "latency").
"""

from __future__ import annotations

from benchmarks.common import data
from benchmarks.common.apps import mean_latency
from benchmarks.common.graph import Call, Job, Ref, Scenario
from benchmarks.common.workload import Metric, ModeResults, Target, Workload

FILES = ("main.py", "game.py", "snake.py", "food.py")
QUICK = {"teams": 1, "architect_tokens": 48, "code_tokens": 24, "review_tokens": 24}
FULL = {"teams": 2, "architect_tokens": 128, "code_tokens": 96, "review_tokens": 64}
SYSTEM = "You are a member of a software team."


def team_job(name: str, size: dict[str, int]) -> Job:
    """The roles' {placeholders} become inputs (other agents' outputs) or fixed text."""
    architect = Call("architect", _turn(data.role_prompt("architect"), "design"), {},
                     size["architect_tokens"])  # fmt: skip
    programmers = []
    for f in FILES:
        others = [o for o in FILES if o != f]
        text = data.role_prompt("programmer").format(
            architect_response="{{input:design}}", file_name=f, other_filename1=others[0],
            other_filename2=others[1], other_filename3=others[2], code="{code}",
        )  # fmt: skip
        programmers.append(Call(_stem(f, "code"), _turn(text, "code"),
                                {"design": Ref("architect")}, size["code_tokens"]))  # fmt: skip
    codes = {f"{_stem(f, '')}code": f"{{{{input:{_stem(f, 'code')}}}}}" for f in FILES}
    review_text = data.role_prompt("reviewer").format(**codes, review="").rstrip()
    reviewer = Call("review", _turn(review_text, "review"),
                    {_stem(f, "code"): Ref(_stem(f, "code")) for f in FILES},
                    size["review_tokens"])  # fmt: skip
    revisers = []
    for f in FILES:
        text = data.role_prompt("reviser").format(
            **codes, review="{{input:review}}", file_name=f, revised_code="{revised_code}"
        )
        inputs = {_stem(g, "code"): Ref(_stem(g, "code")) for g in FILES}
        revisers.append(Call(_stem(f, "revised"), _turn(text, "revised"),
                             {**inputs, "review": Ref("review")}, size["code_tokens"]))  # fmt: skip
    calls = (architect, *programmers, reviewer, *revisers)
    return Job(name, "multi_agent", calls, {c.name: "latency" for c in revisers})


def scenarios(quick: bool) -> list[Scenario]:
    size = QUICK if quick else FULL
    jobs = tuple(team_job(f"team{i}", size) for i in range(size["teams"]))
    return [Scenario("team", jobs, notes=size)]


def metrics(results: ModeResults) -> dict[str, float]:
    return {"completion": mean_latency(results.get("team"))}


def _turn(text: str, output: str) -> str:
    return data.chatml(SYSTEM, text, output)


def _stem(file_name: str, suffix: str) -> str:
    """main.py, "code" -> main_code (the roles' placeholder names)."""
    return f"{file_name.removesuffix('.py')}_{suffix}"


WORKLOAD = Workload(
    name="multi_agent",
    summary="architect -> 4 programmers -> reviewer -> 4 revisers, one graph per team",
    scenarios=scenarios,
    metrics=metrics,
    metric_specs=(Metric("completion", "s"),),
    baselines=("baseline_throughput", "baseline_latency"),
    ablations=("prefix_sharing", "objective_deduction", "task_groups", "pipelined_prefill"),
    targets=(
        Target("completion vs latency-tuned", "completion", "baseline_latency", minimum=5.0),
        Target("completion vs throughput-tuned", "completion", "baseline_throughput",
               minimum=1.5),
    ),  # fmt: skip
)
