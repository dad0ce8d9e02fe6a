"""benchmarks/constrained.py on a tiny model: each mode's run ends as it should, its step timed."""

from __future__ import annotations

import json

from benchmarks.constrained import MODES, decode_step_ms, main
from server.engine import LLMEngine, SamplingParams


def test_each_mode_runs_its_batch_to_the_end(tiny_llama_path, tmp_path, monkeypatch) -> None:
    engine = LLMEngine.from_pretrained(str(tiny_llama_path))
    ids = engine.tokenizer.encode("Describe a cat as JSON:")
    for mode, extra in MODES.items():
        result = decode_step_ms(engine, ids, 3, SamplingParams(max_tokens=12, temperature=0,
                                                                **extra))  # fmt: skip
        assert len(result["tokens"]) == 3 and result["decode_step_ms"] > 0
        if mode == "plain":
            assert result["tokens"] == [12, 12, 12]
        if mode == "choices" and result["tokens"][0] < 12:
            assert result["text"] in extra["choices"]
    monkeypatch.setattr("benchmarks.constrained.RESULTS", tmp_path)
    main(["--quick", "--model", str(tiny_llama_path)])
    out = tmp_path / "constrained_cpu_quick.json"  # the full run's file stays as it was
    report = json.loads(out.read_text())
    assert {r["mode"] for r in report["rows"]} == set(MODES)
    assert all(r["steps"] >= 1 and r["decode_step_ms"] > 0 for r in report["rows"])
