import math

import pytest

from benchmarks.common.graph import JobResult, Ref
from benchmarks.common.modes import BASELINES, ablation_by_name
from benchmarks.common.workload import load_workload, workload_names

BUILT_HERE = ("chain_summary", "map_reduce", "mixed", "multi_agent", "shared_prompt")


def test_every_workload_module_is_found() -> None:
    assert set(BUILT_HERE) <= set(workload_names())
    with pytest.raises(ValueError, match="unknown workload 'nope'; available: "):
        load_workload("nope")


@pytest.mark.parametrize("name", BUILT_HERE)
@pytest.mark.parametrize("quick", [True, False])
def test_workload_builds_and_its_metrics_come_out(name: str, quick: bool) -> None:
    workload = load_workload(name)
    assert all(b in BASELINES for b in workload.baselines)
    for ablation in workload.ablations:
        ablation_by_name(ablation)
    scenarios = workload.scenarios(quick)
    results = {}
    for scenario in scenarios:
        for job in scenario.jobs:
            for call in job.calls:
                values = {k: "x" if isinstance(v, Ref) else v for k, v in call.inputs.items()}
                # SmolLM2 has 8192 positions: prompts stay far below (4 chars ~ 1 token)
                assert len(call.render(values)) + 4 * call.max_tokens < 4 * 4096
        # each job runs 4 s or more, so the chats of mixed overlap its map-reduce
        results[scenario.name] = [
            JobResult(j.name, j.app, j.start_s, j.start_s + 4 + 0.05 * i, {}, j.output_tokens,
                      j.output_tokens)
            for i, j in enumerate(scenario.jobs)
        ]
    metrics = workload.metrics(results)
    assert set(metrics) == {m.name for m in workload.metric_specs}
    assert all(v > 0 and not math.isnan(v) for v in metrics.values())
    assert {t.metric for t in workload.targets} <= set(metrics)


def test_quick_sizes_are_smaller_than_full_ones() -> None:
    for name in BUILT_HERE:
        workload = load_workload(name)

        def size(quick: bool, w=workload) -> int:
            return sum(j.output_tokens for s in w.scenarios(quick) for j in s.jobs)

        assert size(True) < size(False), name


def test_multi_agent_graph_has_parallel_branches() -> None:
    (team,) = load_workload("multi_agent").scenarios(True)[0].jobs
    deps = {c.name: {v.call for v in c.inputs.values() if isinstance(v, Ref)} for c in team.calls}
    assert deps["architect"] == set()
    assert deps["main_code"] == {"architect"}
    assert deps["review"] == {"main_code", "game_code", "snake_code", "food_code"}
    assert deps["food_revised"] == deps["review"] | {"review"}
    assert set(team.awaited) == {"main_revised", "game_revised", "snake_revised", "food_revised"}


def test_a_module_without_workload_but_with_main_is_dispatched_to_main() -> None:
    if "rag" not in workload_names():
        pytest.skip("benchmarks/workloads/rag.py is not there yet")
    entry = load_workload("rag")
    assert callable(entry) and entry.__name__ == "main"


def test_shared_prompt_throughput_is_the_rate_where_latency_reaches_the_bound() -> None:
    from benchmarks.workloads.shared_prompt import throughput_at_bound

    # 0.05 s/token at 1 req/s, 0.15 at 2: the bound 0.1 is reached half way, at 1.5 req/s
    assert throughput_at_bound({0.5: 0.03, 1.0: 0.05, 2.0: 0.15, 4.0: 0.9}, 0.1) == 1.5
    # all within: at least the top rate; the lowest already beyond: below the lowest rate
    top = throughput_at_bound({0.5: 0.03, 1.0: 0.05}, 0.1)
    assert top == 1.0 and top.side == ">="
    low = throughput_at_bound({0.5: 0.2, 1.0: 0.05}, 0.1)
    assert low == 0.5 and low.side == "<"
    # not monotone: the first crossing counts
    assert throughput_at_bound({0.5: 0.05, 1.0: 0.15, 2.0: 0.05}, 0.1) == 0.75
    assert math.isnan(throughput_at_bound({4.0: 0.05}, 0.1))  # one rate (an ablation's run)


def test_shared_prompt_sweeps_the_same_users_at_every_rate() -> None:
    scenarios = load_workload("shared_prompt").scenarios(True)
    by_rate = {s.notes["rate_per_s"]: s for s in scenarios}
    assert sorted(by_rate) == [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert [s.all_modes for s in scenarios] == [False] * 5 + [True, False]  # ablations: base rate
    slow, fast = by_rate[0.25].jobs, by_rate[4.0].jobs
    assert [j.calls for j in slow] == [j.calls for j in fast]
    assert all(math.isclose(a.start_s, 16 * b.start_s) for a, b in zip(slow, fast, strict=True))


def test_chain_summary_light_load_is_the_same_requests_spread_wider() -> None:
    scenarios = {s.name: s for s in load_workload("chain_summary").scenarios(True)}
    load, light = scenarios["background"].jobs[1:], scenarios["light_background"].jobs[1:]
    assert [j.name for j in load] == [j.name for j in light] and len(load) == 6
    assert [j.start_s for j in light] == pytest.approx([3 * j.start_s for j in load])
    assert scenarios["light_background"].notes["bg_every_s"] == 1.5


def test_shared_prompt_latency_per_token_counts_the_tokens_generated() -> None:
    """A call that ends at EOS after 10 of its 40 tokens took its latency for those 10: per
    requested token it would read 4x faster than it ran."""
    workload = load_workload("shared_prompt")
    results = {f"rate_{r:g}": [JobResult("u", "app", 0.0, 1.0, {"answer": "x"}, 40, 10)]
               for r in (0.25, 4.0)}  # fmt: skip
    metrics = workload.metrics(results)
    assert metrics["per_token@4/s"] == pytest.approx(100.0)
    assert metrics["per_token@0.25/s"] == pytest.approx(100.0)


def test_mixed_chats_arrive_while_the_map_reduce_runs() -> None:
    """Every chat starts before the throughput-tuned baseline's map-reduce alone ends (~3.7 s
    in --quick), the same chats alone and mixed; the overlap latency counts only the chats
    that started before that run's map-reduce ended."""
    from benchmarks.workloads.mixed import overlap_chat_latency

    scenarios = {s.name: s for s in load_workload("mixed").scenarios(True)}
    chats = [j for j in scenarios["mixed"].jobs if j.app == "chat"]
    assert chats == list(scenarios["chat_alone"].jobs)
    assert len(chats) == 5 and max(j.start_s for j in chats) < 3.7
    jobs = [JobResult("mr", "map_reduce", 0.0, 2.0, {}),
            JobResult("chat0", "chat", 0.5, 1.5, {}), JobResult("chat1", "chat", 1.9, 2.4, {}),
            JobResult("chat2", "chat", 2.6, 2.7, {})]  # fmt: skip
    assert overlap_chat_latency(jobs) == pytest.approx(0.75)
    assert math.isnan(overlap_chat_latency(jobs[:1] + jobs[3:]))


def test_shared_prompt_refuses_a_job_without_generated_tokens() -> None:
    """Usage missing (0 tokens) must not read as a latency per token of the whole latency."""
    results = {f"rate_{r:g}": [JobResult("u7", "app", 0.0, 1.0, {"answer": "x"}, 40, 0)]
               for r in (0.25, 4.0)}  # fmt: skip
    with pytest.raises(ValueError, match="u7"):
        load_workload("shared_prompt").metrics(results)
