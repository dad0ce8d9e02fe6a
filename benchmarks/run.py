"""Application workloads: Parrot against request-level baselines on the same server and engine.

    python -m benchmarks.run WORKLOAD [--quick] [--rounds R] [--rtt-ms MS]
        [--ablations relevant|all|none]

WORKLOAD is a module of benchmarks/workloads/ (chain_summary, map_reduce, shared_prompt,
multi_agent, mixed, rag, ...). Every scenario of the workload runs in every mode, one after
another, each on a fresh server started here: Parrot (the SDK: the server sees the graph), the
baselines (OpenAI API, one request per call; throughput-tuned, latency-tuned, prefix cache off
where it matters) and Parrot with each optimisation switched off by its server flag. Prints a
table with Parrot's gains; saves benchmarks/results/WORKLOAD[_quick].json and .png. With
`--rounds R` all of it runs R times, the mode order rotated each round; the table shows the
median per mode and each gain's range over the rounds, and a target met in some rounds and
missed in others reads "within noise".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common.harness import run_rounds  # noqa: E402
from benchmarks.common.modes import (  # noqa: E402
    ABLATIONS,
    BASELINES,
    PARROT,
    Mode,
    ablation_by_name,
    ablation_mode,
    server_flags,
)
from benchmarks.common.report import build_report, format_table, write_json, write_plot  # noqa: E402
from benchmarks.common.workload import Workload, load_workload, workload_names  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        workload = load_workload(args.workload)
    except ValueError as exc:
        print(f"benchmarks.run: {exc}", file=sys.stderr)
        return 2
    if not isinstance(workload, Workload):  # a module that drives its own runs
        ignored = ignored_by_own_driver(args)
        if ignored:
            print(f"benchmarks.run: {args.workload} drives its own runs and takes only --quick "
                  f"and --model; it would ignore {', '.join(ignored)}", file=sys.stderr)
            return 2
        return workload([*(["--quick"] if args.quick else []), "--model", args.model])
    modes, skipped = select_modes(workload, args.ablations, server_flags(args.server_root))
    for note in skipped:
        print(f"note: {note}")
    scenarios = workload.scenarios(args.quick)
    log_dir = Path(tempfile.mkdtemp(prefix=f"parrot-bench-{workload.name}-"))
    print(f"{workload.name}: {workload.summary}")
    print(f"modes: {', '.join(m.name for m in modes)}; server logs in {log_dir}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    main_modes = {PARROT.name, *workload.baselines}
    records = run_rounds(scenarios, modes, main_modes, args.model, args.rtt_ms / 1000, log_dir,
                         args.rounds, tuple(args.server_flag), args.server_root)  # fmt: skip
    report = build_report(workload, modes, records)
    print()
    print(format_table(report))
    stem = f"{workload.name}{'_quick' if args.quick else ''}{args.suffix}"
    meta = {
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "started_at": started,
        "quick": args.quick,
        "model": args.model,
        "rtt_ms": args.rtt_ms,
        "rounds": args.rounds,
        "server_root": str(args.server_root or "this checkout"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "skipped": skipped,
        "scenarios": {s.name: {"jobs": len(s.jobs), **s.notes} for s in scenarios},
    }
    write_json(args.out / f"{stem}.json", report, records, meta)
    write_plot(args.out / f"{stem}.png", report)
    print(f"\nsaved {args.out / stem}.json and .png")
    if any(same.missing for same in report.same_work.values()):
        print("FAILED: the modes did not run the same calls (ERROR lines above)")
        return 1
    return 0


def ignored_by_own_driver(args: argparse.Namespace) -> list[str]:
    """The options given that a workload with its own `main` would not apply: running it
    anyway would label its numbers with settings they were not measured with."""
    defaults = parse_args([args.workload])
    return [
        "--" + name.replace("_", "-")
        for name in ("rtt_ms", "ablations", "server_flag", "server_root", "out", "suffix",
                     "rounds")
        if getattr(args, name) != getattr(defaults, name)
    ]


def select_modes(
    workload: Workload, ablations: str, accepted: frozenset[str]
) -> tuple[list[Mode], list[str]]:
    """Parrot, the workload's baselines, then its ablations the server accepts; and a note for
    each ablation skipped because the server has no flag for it yet."""
    modes = [PARROT, *(BASELINES[b] for b in workload.baselines)]
    if ablations == "none":
        return modes, []
    wanted = (
        [a.name for a in ABLATIONS] if ablations == "all" else list(workload.ablations)
    )
    skipped = []
    for name in wanted:
        ablation = ablation_by_name(name)
        mode = ablation_mode(ablation, accepted)
        if mode is None:
            skipped.append(
                f"ablation {name} skipped: the server accepts none of {', '.join(ablation.flags)}"
            )
        else:
            modes.append(mode)
    return modes, skipped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("workload", help=f"one of: {', '.join(workload_names())}")
    p.add_argument("--quick", action="store_true", help="small sizes (3-10 minutes per workload)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every scenario in every mode this many times, the mode order "
                        "rotated each round (medians and ranges reported)")
    p.add_argument("--rtt-ms", type=float, default=0.0,
                   help="simulated client round trip added to every request of every mode")
    p.add_argument("--ablations", choices=("relevant", "all", "none"), default="relevant",
                   help="Parrot with each optimisation off: the workload's relevant ones, all, none")
    p.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                   help="extra server flag for every mode (repeat; e.g. --server-flag=--engines=2)")
    p.add_argument("--server-root", type=Path, default=None,
                   help="run the server package of this source tree (default: this checkout)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    p.add_argument("--suffix", default="", help="appended to the result file names")
    args = p.parse_args(argv)
    if args.rtt_ms < 0:
        p.error(f"--rtt-ms must be >= 0, got {args.rtt_ms}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


if __name__ == "__main__":
    sys.exit(main())
