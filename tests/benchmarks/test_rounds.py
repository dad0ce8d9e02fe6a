"""Rounds: every mode runs in each, the order rotated; medians, gain ranges, and a verdict of
"within noise" where rounds fall on both sides of a target."""

import json
from pathlib import Path

import pytest

import benchmarks.common.harness as harness
import benchmarks.run as run
from benchmarks.common.apps import single_call_job
from benchmarks.common.graph import JobResult, Scenario
from benchmarks.common.harness import RunRecord, run_rounds
from benchmarks.common.modes import BASELINE_LATENCY, BASELINE_THROUGHPUT, PARROT
from benchmarks.common.report import build_report, format_table, write_json
from benchmarks.common.workload import load_workload

MODES = [PARROT, BASELINE_THROUGHPUT, BASELINE_LATENCY]


def test_each_round_rotates_the_mode_order(monkeypatch: pytest.MonkeyPatch) -> None:
    orders = []

    def fake_run_all(scenarios, modes, *args, round_index=0, **kwargs):
        orders.append([m.name for m in modes])
        return [RunRecord(s.name, m.name, 1.0, [], round=round_index) for s in scenarios
                for m in modes]  # fmt: skip

    monkeypatch.setattr(harness, "run_all", fake_run_all)
    scenario = Scenario("s", (single_call_job("j", "app", "sys", "hi", 4, "latency", 0.0),))
    records = run_rounds([scenario], MODES, set(), "m", 0.0, Path("/tmp"), rounds=4)
    p, t, lat = (m.name for m in MODES)
    assert orders == [[p, t, lat], [t, lat, p], [lat, p, t], [p, t, lat]]
    assert [r.round for r in records] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def _records(jct_by_round: list[dict[str, float]]) -> list[RunRecord]:
    return [
        RunRecord("map_reduce", mode, 1.0, [JobResult("paper0", "map_reduce", 0.0, jct,
                  {"reduce": "x"}, 10)], {"generated_tokens": 10.0}, round=k)
        for k, jcts in enumerate(jct_by_round) for mode, jct in jcts.items()
    ]  # fmt: skip


def test_medians_ranges_and_within_noise(tmp_path: Path) -> None:
    rounds = [{"parrot": 10.0, "baseline_throughput": 12.0, "baseline_latency": 25.0},
              {"parrot": 10.0, "baseline_throughput": 14.0, "baseline_latency": 30.0},
              {"parrot": 10.0, "baseline_throughput": 13.5, "baseline_latency": 21.0}]  # fmt: skip
    records = _records(rounds)
    report = build_report(load_workload("map_reduce"), MODES, records)
    assert report.metrics["baseline_throughput"]["jct"] == 13.5  # the median
    assert report.metrics["baseline_latency"]["jct"] == 25.0
    table = format_table(report)
    assert "1.35x [1.2-1.4]" in table and "2.5x [2.1-3]" in table
    # 1.2, 1.4 and 1.35 against >= 1.3: met in two rounds, missed in one
    assert "[within noise] JCT vs throughput-tuned: 1.35 [1.2-1.4] (want >= 1.3)" in table
    assert "[met] JCT vs latency-tuned: 2.5 [2.1-3] (want >= 2)" in table
    assert "median of 3 rounds" in table
    write_json(tmp_path / "r.json", report, records, {})
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["rounds"]) == 3 and data["rounds"][1]["baseline_latency"]["jct"] == 30.0
    assert data["modes"]["baseline_latency"]["gain_ranges"]["jct"] == [21 / 10, 3.0]
    assert data["targets"][1]["verdict"] == "within noise"
    assert data["targets"][1]["round_values"] == pytest.approx([1.2, 1.4, 1.35])
    assert {r["round"] for r in data["runs"]} == {0, 1, 2}


def test_one_round_reads_as_before() -> None:
    records = _records([{"parrot": 10.0, "baseline_throughput": 12.0, "baseline_latency": 25.0}])
    table = format_table(build_report(load_workload("map_reduce"), MODES, records))
    assert "[MISSED] JCT vs throughput-tuned: 1.2 (want >= 1.3)" in table
    assert "rounds" not in table and "[" not in table.split("targets:")[0]


def test_rounds_option() -> None:
    assert run.parse_args(["map_reduce"]).rounds == 1
    assert run.parse_args(["map_reduce", "--rounds", "3"]).rounds == 3
    with pytest.raises(SystemExit):
        run.parse_args(["map_reduce", "--rounds", "0"])
