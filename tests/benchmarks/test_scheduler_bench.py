"""benchmarks/scheduler.py on a tiny model: it measures with the queue it says it has."""

import json
from pathlib import Path

import pytest

from benchmarks.scheduler import RUNNING, main, measure
from server.engine import LLMEngine


def test_the_queue_is_as_long_as_asked_and_is_left_empty(tiny_llama_path: Path) -> None:
    engine = LLMEngine.from_pretrained(str(tiny_llama_path), max_num_seqs=RUNNING)
    row = measure(engine, waiting=40, steps=4)
    assert row["waiting"] == 40  # the running ones hold every slot throughout
    assert 0 < row["schedule_ms"] < row["step_ms"]
    assert not engine.scheduler.waiting and not engine.scheduler.running
    # the scheduler's own method is back (the benchmark timed it by wrapping)
    assert "schedule" not in vars(engine.scheduler)


def test_a_quick_run_saves_beside_the_full_runs_file(
    tiny_llama_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("benchmarks.scheduler.RESULTS", tmp_path)
    assert main(["--quick", "--model", str(tiny_llama_path), "--waiting", "4", "--steps", "2"]) == 0
    report = json.loads((tmp_path / "scheduler_cpu_quick.json").read_text())
    assert [r["waiting"] for r in report["rows"]] == [4]
    assert not (tmp_path / "scheduler_cpu.json").exists()
