"""benchmarks.attention's CPU table, warm and cold, at its quick sizes: it runs, times both
ways and saves what it printed; the levels kernel's A/B likewise."""

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


@pytest.mark.parametrize("cold", [0, 2])
def test_levels_ab_times_both_versions(tmp_path: Path, cold: int) -> None:
    # the baseline built from this tree's own source: the same outputs, both timed every round
    from server.kernels.cpu import paged_levels

    if not paged_levels.available():
        pytest.skip("no C compiler")
    out = tmp_path / "levels.json"
    attention.main([
        "--levels", "--levels-baseline", str(paged_levels.SOURCE), "--sizes", "4x64,3x100",
        "--rounds", "3", "--cold", str(cold), "--out", str(out),
    ])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["cold_pools"] == cold and report["rounds"] == 3
    rows = report["table"]
    assert [(r["seqs"], r["prefix"]) for r in rows] == [(4, 64), (3, 100)]
    for r in rows:
        assert r["max_abs_diff"] == 0.0
        assert len(r["baseline_rounds"]) == len(r["kernel_rounds"]) == 3
        assert r["kernel_ms"] > 0 and r["baseline_ms"] > 0 and r["speedup"] > 0


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


def test_distinct_rows_against_a_baseline_version(tmp_path: Path) -> None:
    from server.kernels.cpu import paged_decode

    out = tmp_path / "distinct.json"
    attention.main(["--distinct", "2x40,1x17", "--decode-baseline", str(paged_decode.SOURCE),
                    "--rounds", "2", "--quick", "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["decode_baseline"] == str(paged_decode.SOURCE)
    rows = report["distinct"]
    assert [(r["rows"], r["tokens"]) for r in rows] == [(2, 40), (1, 17)]
    assert all(r["ms"] > 0 and r["baseline_ms"] > 0 for r in rows)
