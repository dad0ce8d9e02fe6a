"""benchmarks/speculation.py on a tiny model: both engines answer alike, and the report says so."""

from __future__ import annotations

import json

from benchmarks.speculation import main


def test_the_report_compares_both_engines(tiny_llama_path, tmp_path) -> None:
    out = tmp_path / "s.json"
    main(["--quick", "--model", str(tiny_llama_path), "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["equal"] and rows[0]["generated"] == 32
    assert rows[0]["plain_s"] > 0 and rows[0]["drafting_s"] > 0
