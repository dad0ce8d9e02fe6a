"""benchmarks.attention's CPU table, warm and cold, at its quick sizes: it runs, times both
ways and saves what it printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import attention


@pytest.mark.parametrize("cold", [0, 2])
def test_quick_table_saves_both_ways(tmp_path: Path, cold: int) -> None:
    out = tmp_path / "attention.json"
    attention.main(["--quick", "--cold", str(cold), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["cold_layers"] == cold
    rows = report["table"]
    assert [(r["seqs"], r["prefix"]) for r in rows] == [(4, 512), (4, 2048), (16, 512), (16, 2048)]
    assert all(r["per_seq_ms"] > 0 and r["cascade_ms"] > 0 for r in rows)
    assert all(r["speedup"] == pytest.approx(r["per_seq_ms"] / r["cascade_ms"]) for r in rows)


def test_cold_is_refused_on_cuda() -> None:
    with pytest.raises(SystemExit):
        attention.main(["--device", "cuda", "--cold", "4"])
