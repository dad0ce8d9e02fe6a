"""What a long queue costs each engine step: the scheduler's time against the whole step.

    python -m benchmarks.scheduler [--quick] [--model NAME] [--waiting 16 256 1024 4096]

A batch job (or a burst of users) leaves thousands of requests waiting behind `max_num_seqs`
running ones; the scheduler reads that queue every step. Each case: 16 requests decode (8-token
prompts, greedy, lengths fixed) while `waiting` more wait for a slot (the engine's
`max_num_seqs` is 16); the median over 30 steps of the whole step and of its `schedule()`
call, timed inside the same steps. Prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from server.engine import LLMEngine, SamplingParams

RESULTS = Path(__file__).parent / "results"
RUNNING = 16
WAITING = (0, 16, 256, 1024, 4096)
QUICK_WAITING = (0, 1024)


def measure(engine: LLMEngine, waiting: int, steps: int) -> dict[str, float]:
    """Median step and `schedule()` times (ms) with RUNNING decoding and `waiting` queued."""
    sampling = SamplingParams(max_tokens=10 * steps, temperature=0, ignore_eos=True)
    jobs = [engine.add_request([100 + i % 1000] * 8, sampling) for i in range(RUNNING + waiting)]
    scheduler = engine.scheduler
    schedule = scheduler.schedule
    spent: list[float] = []

    def timed() -> Any:
        start = time.perf_counter()
        try:
            return schedule()
        finally:
            spent.append(time.perf_counter() - start)

    scheduler.schedule = timed  # type: ignore[method-assign]
    try:
        for _ in range(3):  # the running ones prefill and start decoding
            engine.step()
        spent.clear()
        steps_s = []
        for _ in range(steps):
            start = time.perf_counter()
            engine.step()
            steps_s.append(time.perf_counter() - start)
        queued = len(scheduler.waiting)
    finally:
        del scheduler.schedule
        for job in jobs:
            engine.abort(job)
        engine.run_until_idle()
    return {
        "waiting": queued,
        "step_ms": statistics.median(steps_s) * 1e3,
        "schedule_ms": statistics.median(spent) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduler", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--waiting", type=int, nargs="+")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = p.parse_args(argv)
    # a smoke run does not replace the full run's numbers that the README quotes
    args.out = args.out or RESULTS / f"scheduler_cpu{'_quick' if args.quick else ''}.json"
    cases = args.waiting or (QUICK_WAITING if args.quick else WAITING)
    engine = LLMEngine.from_pretrained(args.model, max_num_seqs=RUNNING)
    rows = [measure(engine, waiting, args.steps) for waiting in cases]
    print(f"{'waiting':>8} | {'step ms':>8} | {'schedule ms':>11} | {'share':>6}")
    print(f"{'-' * 8}-|-{'-' * 8}-|-{'-' * 11}-|-{'-' * 6}")
    for row in rows:
        share = row["schedule_ms"] / row["step_ms"]
        print(f"{row['waiting']:>8} | {row['step_ms']:>8.2f} | {row['schedule_ms']:>11.3f} | "
              f"{share:>6.1%}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "running": RUNNING, "steps": args.steps, "threads":
        torch.get_num_threads(), "machine": platform.machine(), "rows": rows,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2))  # fmt: skip
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
