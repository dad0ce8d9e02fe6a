"""`python -m benchmarks.step_phases` runs end to end on a tiny model and writes its rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import step_phases
from server.kernels.cpu import decoder_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not decoder_stack.available(), reason="no C compiler for the CPU kernels"),
]


def test_rounds_split_each_step_into_its_phases(tiny_llama_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "phases.json"
    step_phases.main(["--rows", "2", "--context", "20", "--rounds", "2", "--steps", "3",
                      "--model", str(tiny_llama_path), "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert (report["rows"], report["context"], len(report["rounds"])) == (2, 20, 2)
    for row in report["rounds"]:
        phases = [row[f"{p}_ms"] for p in decoder_stack.PHASES]
        assert min(phases) > 0 and row["floor_ms"] > 0 and row["linears_gbs"] > 0
        # the phases lie inside the step; the rest is the time outside the stack's call
        assert sum(phases) + row["outside_ms"] == pytest.approx(row["step_ms"])
        assert row["outside_ms"] > 0
