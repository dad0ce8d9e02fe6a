"""Every mode's calls are checked against the throughput-tuned baseline's, call by call: a
differing output is reported in the table and JSON, a missing call is an error line (and the
run's exit status, once its results are saved)."""

import json
from pathlib import Path

from benchmarks.common.graph import CallResult, JobResult
from benchmarks.common.harness import RunRecord
from benchmarks.common.modes import BASELINE_LATENCY, BASELINE_THROUGHPUT, PARROT
from benchmarks.common.report import (
    REFERENCE,
    build_report,
    compare_work,
    format_table,
    write_json,
)
from benchmarks.common.workload import load_workload

MODES = [PARROT, BASELINE_THROUGHPUT, BASELINE_LATENCY]
CALLS = {"map0": CallResult("a summary", 30, 4), "reduce": CallResult("the paper", 20, 6)}


def _record(mode: str, calls: dict[str, CallResult] = CALLS) -> RunRecord:
    job = JobResult("paper0", "map_reduce", 0.0, 1.0, {"reduce": calls["reduce"].text}, 10,
                    calls["reduce"].completion_tokens, calls)  # fmt: skip
    return RunRecord("map_reduce", mode, 1.0, [job], {"prefill_tokens": 40.0,
                                                      "cached_tokens": 10.0})  # fmt: skip


def test_the_same_calls_are_the_same_work(tmp_path: Path) -> None:
    records = [_record(m.name) for m in MODES]
    report = build_report(load_workload("map_reduce"), MODES, records)
    assert {m: s.label for m, s in report.same_work.items()} == {
        "parrot": "yes", "baseline_throughput": "(the reference)", "baseline_latency": "yes"}
    table = format_table(report)
    assert "same work as baseline_throughput" in table and "WARNING" not in table
    assert report.counters["parrot"]["prompt_tokens"] == 50
    write_json(tmp_path / "r.json", report, records, {})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["modes"]["parrot"]["same_work"]["label"] == "yes"
    call = data["runs"][0]["jobs"][0]["calls"]["map0"]
    assert call["prompt_tokens"] == 30 and call["completion_tokens"] == 4 and call["chars"] == 9
    assert len(call["sha256"]) == 16


def test_a_differing_output_is_reported_not_raised(tmp_path: Path) -> None:
    other = {"map0": CallResult("another summary", 30, 4),  # a flipped token
             "reduce": CallResult("the paper", 21, 6)}  # so the reduce's prompt differs
    records = [_record("parrot", other), _record("baseline_throughput"),
               _record("baseline_latency")]  # fmt: skip
    report = build_report(load_workload("map_reduce"), MODES, records)
    assert report.same_work["parrot"].label == "2 of 2 calls differ, 1 with another prompt length"
    assert report.same_work["baseline_latency"].label == "yes"
    table = format_table(report)
    assert "WARNING: parrot did other work than baseline_throughput" in table
    assert "map_reduce/paper0/map0" in table
    write_json(tmp_path / "r.json", report, records, {})
    same = json.loads((tmp_path / "r.json").read_text())["modes"]["parrot"]["same_work"]
    assert same["differ"] == 2 and same["calls"] == 2 and same["prompts"] == 1


def test_a_missing_call_is_an_error_in_the_table() -> None:
    records = [_record("parrot", {"reduce": CALLS["reduce"]}), _record("baseline_throughput")]
    same = compare_work(records)["parrot"]
    assert same.label == "NO: 1 jobs ran other calls" and "other calls in parrot" in same.missing[0]
    report = build_report(load_workload("map_reduce"), MODES[:2], records)
    assert "ERROR: map_reduce: job 'paper0' ran other calls" in format_table(report)


def test_no_calls_compared_is_not_yes() -> None:
    job = JobResult("paper0", "map_reduce", 0.0, 1.0, {}, 0, 0, {})  # no calls recorded
    records = [RunRecord("map_reduce", m, 1.0, [job], {}) for m in ("parrot", REFERENCE)]
    assert compare_work(records)["parrot"].label == "no calls compared"


def test_without_the_reference_mode_nothing_is_compared() -> None:
    assert compare_work([_record("parrot"), _record("baseline_latency")]) == {}
