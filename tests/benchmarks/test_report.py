import json
import math
from pathlib import Path

from benchmarks.common.graph import JobResult
from benchmarks.common.harness import RunRecord
from benchmarks.common.modes import BASELINE_LATENCY, BASELINE_THROUGHPUT, BASELINES, PARROT
from benchmarks.common.report import (
    TargetCheck,
    build_report,
    format_table,
    gain,
    gain_side,
    write_json,
    write_plot,
)
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


def test_json_holds_the_gains_the_table_prints(tmp_path: Path) -> None:
    workload = load_workload("map_reduce")
    records = _records({"parrot": 10.0, "baseline_throughput": 12.0, "baseline_latency": 25.0})
    report = build_report(workload, MODES, records)
    write_json(tmp_path / "r.json", report, records, {})
    modes = json.loads((tmp_path / "r.json").read_text())["modes"]
    for line in format_table(report).splitlines()[2:5]:
        mode, _, shown = (cell.strip() for cell in line.split("|")[:3])
        assert modes[mode]["gains"] == ({} if mode == "parrot" else
                                        {"jct": float(shown.removesuffix("x"))})  # fmt: skip
    assert modes["baseline_latency"]["gains"] == {"jct": 2.5}


def _shared_prompt_records(throughput_curves: dict[str, dict[float, float]]) -> list[RunRecord]:
    """Runs of shared_prompt whose jobs take `s_per_token` x their requested tokens."""
    records = []
    for mode, curve in throughput_curves.items():
        for rate, s_per_token in curve.items():
            jobs = [JobResult("user0", "app", 0.0, s_per_token * 10, {"answer": "x"}, 10, 10)]
            records.append(RunRecord(f"rate_{rate:g}", mode, 1.0, jobs, {}))
    return records


def test_throughput_past_the_end_of_the_sweep_is_a_bound_in_the_table_and_verdicts(
    tmp_path: Path,
) -> None:
    workload = load_workload("shared_prompt")
    modes = [PARROT, BASELINES["baseline_throughput"], BASELINES["baseline_no_cache"]]
    rates = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    records = _shared_prompt_records({
        "parrot": dict.fromkeys(rates, 0.05),                      # within at every rate: >= 8
        "baseline_throughput": {r: 0.05 * r for r in rates},       # reaches 0.1 s at 2 req/s
        "baseline_no_cache": dict.fromkeys(rates, 0.5),            # beyond at 0.25: < 0.25
    })  # fmt: skip
    report = build_report(workload, modes, records)
    table = format_table(report)
    row = {line.split(" |")[0].strip(): line for line in table.splitlines()}
    assert "| >=8 " in row["parrot"]
    assert "| 2 " in row["baseline_throughput"] and "| >=4x " in row["baseline_throughput"]
    assert "| <0.25 " in row["baseline_no_cache"] and "| >=32x " in row["baseline_no_cache"]
    # a gain of at least 32 meets ">= 8" (it read 0 req/s and a MISSED verdict before)
    assert "[met] throughput vs prefix cache off: >=32 (want >= 8)" in table
    assert "[met] throughput vs prefix cache on: >=4 (want >= 1.5)" in table
    write_json(tmp_path / "r.json", report, records, {})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["modes"]["parrot"]["bounds"] == {"throughput": ">="}
    assert data["modes"]["baseline_no_cache"]["bounds"] == {"throughput": "<"}
    assert data["modes"]["baseline_throughput"]["bounds"] == {}
    assert data["modes"]["baseline_no_cache"]["gains"]["throughput"] == 32.0
    assert data["modes"]["baseline_no_cache"]["gain_bounds"] == {"throughput": ">="}


def test_a_gain_between_two_lower_bounds_says_nothing() -> None:
    from benchmarks.common.workload import Bound

    assert gain_side(Bound(8.0, ">="), Bound(8.0, ">="), higher_is_better=True) == "?"
    assert gain_side(Bound(8.0, ">="), 2.0, higher_is_better=True) == ">="
    assert gain_side(2.0, Bound(8.0, ">="), higher_is_better=True) == "<="
    assert gain_side(2.0, Bound(0.25, "<"), higher_is_better=True) == ">="
    assert gain_side(2.0, 3.0, higher_is_better=False) == "="
    check = TargetCheck("t", 1.0, 1.5, None, "?")
    assert check.verdict == "undecided" and not check.met
    assert TargetCheck("t", 1.0, 1.5, None, "<=").verdict == "MISSED"
    assert TargetCheck("t", 2.0, 1.5, None, "<=").verdict == "undecided"


def test_plot_marks_modes_without_a_value_and_bounds() -> None:
    from benchmarks.common.report import bar_notes
    from benchmarks.common.workload import Bound

    notes = bar_notes([4.1, math.nan, Bound(8.0, ">="), Bound(0.25, "<")])
    assert notes == ["", "not run", ">=", "<"]
