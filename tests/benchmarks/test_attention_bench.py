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


def test_engine_steps_alternate_blocks_and_report_median_and_iqr(tiny_llama_path: Path) -> None:
    result = attention.engine_step("cpu", prefix=64, forks=4, steps=5, block=2,
                                   cascade_rule=attention.FORCED, model=str(tiny_llama_path))
    assert result["steps"] == 5 and result["greedy_outputs_equal"] is True
    for arm in ("per_seq", "cascade"):
        low, high = result[f"{arm}_iqr_ms"]
        assert 0 < low <= result[f"{arm}_step_ms"] <= high


def test_engine_steps_raise_when_cascade_changes_the_outputs(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.engine import LLMEngine

    real = LLMEngine.context_token_ids

    def flipped(self: LLMEngine, ctx: object) -> list[int]:
        ids = list(real(self, ctx))
        return ids + [0] if self.config.enable_cascade else ids

    monkeypatch.setattr(LLMEngine, "context_token_ids", flipped)
    with pytest.raises(AssertionError, match="greedy outputs"):
        attention.engine_step("cpu", prefix=64, forks=4, steps=2, block=1,
                              model=str(tiny_llama_path))  # fmt: skip
