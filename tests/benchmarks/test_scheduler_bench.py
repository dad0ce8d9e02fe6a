"""benchmarks/scheduler.py on a tiny model: it measures with the queue it says it has."""

from pathlib import Path

from benchmarks.scheduler import RUNNING, measure
from server.engine import LLMEngine


def test_the_queue_is_as_long_as_asked_and_is_left_empty(tiny_llama_path: Path) -> None:
    engine = LLMEngine.from_pretrained(str(tiny_llama_path), max_num_seqs=RUNNING)
    row = measure(engine, waiting=40, steps=4)
    assert row["waiting"] == 40  # the running ones hold every slot throughout
    assert 0 < row["schedule_ms"] < row["step_ms"]
    assert not engine.scheduler.waiting and not engine.scheduler.running
    # the scheduler's own method is back (the benchmark timed it by wrapping)
    assert "schedule" not in vars(engine.scheduler)
