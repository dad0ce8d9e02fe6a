"""Engine decode steps beside another busy process, by how OpenMP's idle threads wait.

    python -m benchmarks.thread_wait [--quick] [--rounds N] [--model NAME]

The CPU kernels run their parallel regions on libgomp's threads; a thread waiting at a barrier
spins GOMP_SPINCOUNT rounds, then sleeps. Beside a process that takes a core, a spinning thread
holds the core its descheduled partner needs. Each setting (libgomp's default, spin counts,
OMP_WAIT_POLICY=PASSIVE) runs in a fresh process (libgomp reads them once, when it loads) that
times decode steps of a batch of 4 sequences with 2 compute threads: alone, and beside a
process that keeps a core busy for a share of every 10 ms (`load`: 0.3, 1.0). The settings
run in turn within each round, so drift hits all of them. Prints a table of median step times
and ratios to the default's quiet step, and saves JSON. (benchmarks/README, "Compute threads
beside a busy process", says why the server keeps libgomp's default.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DEFAULT = "default"
SETTINGS = (DEFAULT, "50000", "10000", "200000", "PASSIVE")
QUICK_SETTINGS = (DEFAULT, "50000", "PASSIVE")
LOADS = (0.0, 0.3, 1.0)
BATCH, STEPS = 4, 24


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three settings, one round")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=None, help="default 2 (1 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS / "thread_wait_cpu.json")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(decode_step_ms(args.child[1])))
        return 0
    settings = QUICK_SETTINGS if args.quick else SETTINGS
    rounds = args.rounds or (1 if args.quick else 2)
    steps: dict[str, dict[str, list[float]]] = {s: {str(w): [] for w in LOADS} for s in settings}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for done in range(rounds):
        for load in LOADS:
            for setting in settings:
                steps[setting][str(load)] += run_setting(setting, load, args.model)
                print(f"round {done + 1}/{rounds}, load {load}, {setting}: "
                      f"{statistics.median(steps[setting][str(load)]):.1f} ms", flush=True)  # fmt: skip
    table = summarize(steps)
    print(format_table(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python -m benchmarks.thread_wait", *(argv or sys.argv[1:])]),
        "started_at": started, "model": args.model, "batch": BATCH, "threads": 2,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "table": table,
        "step_ms": steps,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nsaved {args.out}")
    return 0


def run_setting(setting: str, load: float, model: str) -> list[float]:
    """The step times (ms) of a fresh process with `setting`, beside a busy one at `load`."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if setting == "PASSIVE":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif setting != DEFAULT:
        env["GOMP_SPINCOUNT"] = setting
    busy = None
    if load > 0:
        busy = subprocess.Popen([sys.executable, "-c", _BUSY.format(load=load)])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.thread_wait", "--child", setting, model],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.stdout.splitlines()[-1])


# a process that keeps one core busy for `load` of every 10 ms
_BUSY = """
import time
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < 0.01 * {load}:
        pass
    time.sleep(0.01 * (1 - {load}))
"""


def decode_step_ms(model: str) -> list[float]:
    """Step times (ms) of `BATCH` sequences decoding together, 2 compute threads."""
    import torch

    from server.engine import LLMEngine, SamplingParams

    torch.set_num_threads(2)
    engine = LLMEngine.from_pretrained(model)
    prompts = [f"Question {i}: why do the leaves of trees turn red in autumn?" for i in range(BATCH)]
    sampling = SamplingParams(max_tokens=STEPS + 8, temperature=0, ignore_eos=True)
    engine.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    for prompt in prompts:
        engine.add_request(prompt, sampling)
    engine.step()  # the prefill
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summarize(steps: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Median step (ms) per setting and load, and its ratio to the default's quiet step."""
    quiet = statistics.median(steps[DEFAULT][str(LOADS[0])])
    table = {}
    for setting, by_load in steps.items():
        for load, times in by_load.items():
            median = statistics.median(times)
            table[f"{setting} @ load {load}"] = {"median_ms": round(median, 2),
                                                 "vs_default_quiet": round(median / quiet, 2)}  # fmt: skip
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'setting @ load':32} {'median step ms':>15} {'x default quiet':>16}"]
    for name, row in table.items():
        lines.append(f"{name:32} {row['median_ms']:>15.1f} {row['vs_default_quiet']:>16.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
