"""Parrot with several sets of server flags, side by side: one scenario of a workload, the
settings run in turn within each round, their order rotated from round to round (so a machine
state that drifts hits all of them, and none always runs first), and the throughput-tuned
baseline in every round as a yardstick.

    python -m benchmarks.ab WORKLOAD SCENARIO --flags= --flags=--latency-other-decode-rows=0
        [--rounds 4] [--full] [--model NAME]

Prints each setting's mean job latency per app for every round and their mean; saves
benchmarks/results/ab_WORKLOAD_SCENARIO.json. Each `--flags=` value is one setting: its flags
separated by commas (empty for the defaults); write it with `=`, as it starts with dashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common.graph import JobResult  # noqa: E402
from benchmarks.common.harness import run_rounds  # noqa: E402
from benchmarks.common.modes import BASELINE_THROUGHPUT, PARROT, Mode  # noqa: E402
from benchmarks.common.workload import Workload, load_workload  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = load_workload(args.workload)
    if not isinstance(workload, Workload):
        print(f"benchmarks.ab: {args.workload} drives its own runs", file=sys.stderr)
        return 2
    scenarios = {s.name: s for s in workload.scenarios(not args.full)}
    if args.scenario not in scenarios:
        print(f"benchmarks.ab: scenarios of {args.workload}: {', '.join(scenarios)}",
              file=sys.stderr)  # fmt: skip
        return 2
    modes = [setting_mode(f) for f in args.flags or [""]] + [BASELINE_THROUGHPUT]
    names = {m.name for m in modes}
    log_dir = Path(tempfile.mkdtemp(prefix=f"parrot-ab-{args.workload}-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    records = run_rounds([scenarios[args.scenario]], modes, names, args.model, 0.0, log_dir,
                         args.rounds)  # fmt: skip
    rounds: list[dict[str, dict[str, float]]] = [{} for _ in range(args.rounds)]
    for r in records:
        rounds[r.round][r.mode] = latency_by_app(r.jobs)
    print(format_table(rounds, [m.name for m in modes]))
    out = args.out / f"ab_{args.workload}_{args.scenario}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python -m benchmarks.ab", *(argv or sys.argv[1:])]),
                               "started_at": started, "rounds": rounds}, indent=2) + "\n")  # fmt: skip
    print(f"\nsaved {out}")
    return 0


def setting_mode(flags: str) -> Mode:
    """Parrot with the comma-separated `flags` on top of its usual ones."""
    extra = tuple(f for f in flags.split(",") if f)
    return dataclasses.replace(PARROT, name=f"parrot[{','.join(extra)}]", flags=(*PARROT.flags, *extra))


def latency_by_app(jobs: list[JobResult]) -> dict[str, float]:
    """Mean job latency (s) per app."""
    apps = sorted({j.app for j in jobs})
    return {a: statistics.fmean(j.latency_s for j in jobs if j.app == a) for a in apps}


def format_table(rounds: list[dict[str, dict[str, float]]], modes: list[str]) -> str:
    """One row per setting and app: the latency of each round, then their mean."""
    lines = []
    for mode in modes:
        apps = sorted({a for r in rounds for a in r.get(mode, {})})
        for app in apps:
            values = [r[mode][app] for r in rounds if app in r.get(mode, {})]
            cells = " ".join(f"{v:7.3f}" for v in values)
            lines.append(f"{mode:45s} {app:14s} {cells}   mean {statistics.fmean(values):.3f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("workload")
    p.add_argument("scenario")
    p.add_argument("--flags", action="append", help="one setting: comma-separated server flags")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--full", action="store_true", help="full sizes instead of --quick ones")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


if __name__ == "__main__":
    sys.exit(main())
