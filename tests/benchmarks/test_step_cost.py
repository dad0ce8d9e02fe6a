"""`python -m benchmarks.step_cost` runs end to end on a tiny model and writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import step_cost

pytestmark = pytest.mark.slow


def test_step_cost_quick_writes_one_row_per_case(tiny_llama_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "step_cost.json"
    step_cost.main(["--quick", "--model", str(tiny_llama_path), "--out", str(out)])
    report = json.loads(out.read_text())
    cases = [(r["decode_rows"], r["prefill_tokens"]) for r in report["table"]]
    assert cases == [(1 + d, p) for d, p in step_cost.QUICK_CASES]
    assert all(r["step_ms"] > 0 for r in report["table"])
    assert report["table"][0]["vs_one_row"] == 1.0
