"""benchmarks/speculation.py on a tiny model: both engines answer alike, and the report says so."""

from __future__ import annotations

import json

from benchmarks.speculation import main


def test_the_report_compares_both_engines(tiny_llama_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("benchmarks.speculation.RESULTS", tmp_path)
    main(["--quick", "--model", str(tiny_llama_path)])
    out = tmp_path / "speculation_cpu_quick.json"  # the full run's file stays as it was
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["sampling"] for r in rows] == ["greedy", "T=0.7"]
    assert all(r["equal"] and r["generated"] == 32 for r in rows)
    assert all(r["plain_s"] > 0 and r["drafting_s"] > 0 for r in rows)
    constrained = report["constrained"]
    assert [(r["mode"], r["sampling"]) for r in constrained] == [
        ("json_object", "greedy"), ("json_object", "T=0.7")]
    assert all(r["equal"] and r["plain_steps"] > 0 for r in constrained)
