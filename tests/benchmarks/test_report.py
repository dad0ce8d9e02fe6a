import json
import math
from pathlib import Path

from benchmarks.common.graph import JobResult
from benchmarks.common.harness import RunRecord
from benchmarks.common.modes import BASELINE_LATENCY, BASELINE_THROUGHPUT, PARROT
from benchmarks.common.report import build_report, format_table, gain, write_json, write_plot
from benchmarks.common.workload import load_workload

MODES = [PARROT, BASELINE_THROUGHPUT, BASELINE_LATENCY]


def _records(jct: dict[str, float]) -> list[RunRecord]:
    return [
        RunRecord("map_reduce", mode, jct[mode] + 1, [JobResult("paper0", "map_reduce", 0.0,
                  jct[mode], {"reduce": "text"}, 10)], {"generated_tokens": 10.0})
        for mode in jct
    ]  # fmt: skip


def test_gain_is_the_factor_parrot_is_better_by() -> None:
    assert gain(2.0, 5.0, higher_is_better=False) == 2.5
    assert gain(8.0, 2.0, higher_is_better=True) == 4.0
    assert math.isnan(gain(float("nan"), 1.0, False))
    assert math.isnan(gain(0.0, 1.0, False))


def test_table_shows_gains_and_target_verdicts() -> None:
    workload = load_workload("map_reduce")
    jct = {"parrot": 10.0, "baseline_throughput": 12.0, "baseline_latency": 25.0}
    report = build_report(workload, MODES, _records(jct))
    assert report.metrics["baseline_latency"]["jct"] == 25.0
    table = format_table(report)
    assert "2.5x" in table and "1.2x" in table
    assert "[met] JCT vs latency-tuned: 2.5 (want >= 2)" in table
    assert "[MISSED] JCT vs throughput-tuned: 1.2 (want >= 1.3)" in table


def test_json_and_plot_are_written(tmp_path: Path) -> None:
    workload = load_workload("map_reduce")
    jct = {"parrot": 10.0, "baseline_throughput": 12.0, "baseline_latency": 25.0}
    records = _records(jct)
    report = build_report(workload, MODES, records)
    write_json(tmp_path / "r.json", report, records, {"quick": True})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["quick"] is True
    assert data["modes"]["parrot"]["metrics"] == {"jct": 10.0}
    assert data["modes"]["parrot"]["counters"]["generated_tokens"] == 10.0
    assert [t["met"] for t in data["targets"]] == [True, False]
    assert data["runs"][2]["jobs"][0]["end_s"] == 25.0
    write_plot(tmp_path / "r.png", report)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
