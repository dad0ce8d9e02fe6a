"""benchmarks.thread_wait's table (the runs themselves take minutes: not run here)."""

from __future__ import annotations

from benchmarks.thread_wait import format_table, summarize


def test_the_table_gives_medians_and_ratios_to_the_default_quiet_step() -> None:
    steps = {
        "default": {"0.0": [10.0, 30.0, 20.0], "0.3": [40.0], "1.0": [100.0, 90.0, 500.0]},
        "PASSIVE": {"0.0": [25.0], "0.3": [30.0], "1.0": [35.0]},
    }
    table = summarize(steps)
    assert table["default @ load 0.0"] == {"median_ms": 20.0, "vs_default_quiet": 1.0}
    assert table["default @ load 1.0"] == {"median_ms": 100.0, "vs_default_quiet": 5.0}
    assert table["PASSIVE @ load 0.3"] == {"median_ms": 30.0, "vs_default_quiet": 1.5}
    lines = format_table(table).splitlines()
    assert len(lines) == 1 + 6 and lines[-1].split()[-2:] == ["35.0", "1.75"]
