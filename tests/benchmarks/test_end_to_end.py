"""One scenario through the real harness: a server per mode, the SDK and the OpenAI client."""

from pathlib import Path

import pytest

from benchmarks.common.apps import map_reduce_job
from benchmarks.common.graph import Scenario
from benchmarks.common.harness import run_all
from benchmarks.common.modes import BASELINE_THROUGHPUT, PARROT
from benchmarks.common.report import build_report, format_table
from benchmarks.common.workload import load_workload


@pytest.mark.slow
def test_rtt_is_charged_before_every_request_of_every_mode(tiny_llama_path: Path) -> None:
    """Parrot's SDK sends three requests one after another before a value arrives (create the
    session, submit the graph, read the value); the baseline one per call, a chain's in turn."""
    import asyncio

    from benchmarks.common.apps import chain_job
    from benchmarks.common.harness import _model_id
    from benchmarks.common.openai_runner import run_openai_jobs
    from benchmarks.common.parrot_runner import run_parrot_jobs
    from server.launcher import ServerProcess

    rtt = 0.3
    jobs = (chain_job("chain", ["First part.", "Second part."], 2),)  # two calls in turn
    with ServerProcess(str(tiny_llama_path)) as server:
        (parrot,) = asyncio.run(run_parrot_jobs(server.url, jobs, rtt))
        (baseline,) = asyncio.run(run_openai_jobs(server.url, _model_id(server.url), jobs, rtt))
    assert parrot.latency_s >= 3 * rtt
    assert baseline.latency_s >= 2 * rtt
    assert parrot.outputs == baseline.outputs


@pytest.mark.slow
def test_both_apis_run_the_same_graphs_and_count_each_prompt_token_once(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """A chain and a map-reduce, run by Parrot and by the OpenAI-client baseline (one server
    start each, as the benchmarks do): the same outputs and per-call usage in both modes, and
    prefill + cached tokens equal to the calls' prompt tokens, as in a plain client's run (a
    prefix filled before its call was ready (pipelined) was counted as computed by its fill
    and again as reused by its first fork, so a chain's cached tokens were about doubled)."""
    from benchmarks.common.apps import chain_job

    chunks = [f"Part {i}: " + "words and more words " * 20 for i in range(3)]
    jobs = (chain_job("chain", chunks, 4), map_reduce_job("mr", chunks, 4, 6, start_s=0.1))
    modes = [PARROT, BASELINE_THROUGHPUT]
    records = run_all([Scenario("map_reduce", jobs)], modes, {m.name for m in modes},
                      str(tiny_llama_path), 0.0, tmp_path)  # fmt: skip
    assert [r.mode for r in records] == ["parrot", "baseline_throughput"]
    for record in records:
        chain, mr = record.jobs
        assert 0 < mr.latency_s <= record.wall_s and 0 < chain.latency_s <= record.wall_s
        # greedy and the same prompts, so the same work
        assert record.counters["generated_tokens"] == records[0].counters["generated_tokens"]
        assert 0 < record.counters["generated_tokens"] <= 3 * 4 + 3 * 4 + 6
        # every call's usage, awaited or not
        assert set(mr.calls) == {"map0", "map1", "map2", "reduce"}
        assert set(chain.calls) == {"step0", "step1", "step2"}
        calls = [c for j in record.jobs for c in j.calls.values()]
        assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in calls)
        prompt = sum(c.prompt_tokens for c in calls)
        assert record.counters["prefill_tokens"] + record.counters["cached_tokens"] == prompt
    for ours, theirs in zip(records[0].jobs, records[1].jobs, strict=True):
        assert ours.outputs == theirs.outputs and ours.calls == theirs.calls
        # the awaited outputs' tokens, as each API reported them
        assert 0 < ours.generated_tokens == theirs.generated_tokens
    assert records[0].jobs[1].generated_tokens <= 6  # the reduce's
    report = build_report(load_workload("map_reduce"), modes, records)
    assert {m: s.label for m, s in report.same_work.items()} == {
        "parrot": "yes", "baseline_throughput": "(the reference)"}
    assert "baseline_throughput" in format_table(report)
