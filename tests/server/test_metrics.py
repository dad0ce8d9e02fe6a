"""Prometheus rendering of the server's counters (pure)."""

import pytest

from server.engine import EngineStats
from server.metrics import Family, Metrics


def test_render_merges_server_and_engine_counters() -> None:
    m = Metrics()
    m.prompt_tokens.inc(120)
    m.fork_cached_tokens.inc(70)
    m.graph_submissions.inc()
    m.http_requests.inc(route="/v1/sessions/{session_id}/graph", status="200")
    m.http_requests.inc(route="/v1/sessions/{session_id}/graph", status="200")
    stats = EngineStats(prefill_tokens=50, cached_tokens=5, generated_tokens=9, free_blocks=30,
                        total_blocks=32, drafted_tokens=12, accepted_tokens=7)  # fmt: skip
    text = m.render(stats)
    lines = set(text.splitlines())
    assert "parrot_prompt_tokens_total 120" in lines
    assert "parrot_prefill_tokens_total 50" in lines
    assert "parrot_cached_tokens_total 75" in lines  # prefix cache + forks
    assert "parrot_generated_tokens_total 9" in lines
    assert "parrot_kv_free_blocks 30" in lines
    assert "parrot_drafted_tokens_total 12" in lines
    assert "parrot_accepted_draft_tokens_total 7" in lines
    assert "parrot_graph_submissions_total 1" in lines
    assert (
        'parrot_http_requests_total{route="/v1/sessions/{session_id}/graph",status="200"} 2'
        in lines
    )
    assert "# TYPE parrot_kv_free_blocks gauge" in lines
    assert "# TYPE parrot_prompt_tokens_total counter" in lines
    assert text.endswith("\n")


def test_kv_pool_gauges_are_left_out_while_no_engine_runs() -> None:
    """While every engine restarts, the pool's size is unknown: its gauges are absent (the
    series goes stale), not 0 blocks, which reads as a pool of size 0 and a full cache."""
    text = Metrics().render(EngineStats())  # what the pool sums when no engine runs
    assert "parrot_kv_total_blocks" not in text and "parrot_kv_free_blocks" not in text
    assert "parrot_engine_jobs 0" in text.splitlines()  # what is truly 0 stays
    lines = Metrics().render(EngineStats(free_blocks=0, total_blocks=32)).splitlines()
    assert "parrot_kv_free_blocks 0" in lines and "parrot_kv_total_blocks 32" in lines


def test_labels_are_checked_and_escaped() -> None:
    fam = Family("x_total", "counter", "help", ("route",))
    with pytest.raises(ValueError, match="takes labels"):
        fam.inc(status="200")
    fam.inc(route='a"b\\c')
    from server.metrics import render_families

    assert 'x_total{route="a\\"b\\\\c"} 1' in render_families([fam])
