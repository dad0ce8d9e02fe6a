"""Run every scenario of a workload in every mode, each on a fresh server started here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from benchmarks.common.graph import JobResult, Scenario
from benchmarks.common.modes import Mode
from benchmarks.common.openai_runner import run_openai_jobs
from benchmarks.common.parrot_runner import run_parrot_jobs
from server.launcher import ServerProcess

COUNTERS = {
    "parrot_prefill_tokens_total": "prefill_tokens",
    "parrot_cached_tokens_total": "cached_tokens",
    "parrot_generated_tokens_total": "generated_tokens",
    "parrot_preemptions_total": "preemptions",
    "parrot_cascade_saved_tokens_total": "cascade_saved_tokens",
    "parrot_paused_steps_total": "paused_steps",
}
WARMUP_PROMPT = "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"


@dataclass(slots=True)
class RunRecord:
    """One scenario in one mode: job results and the server's work counters over the run."""

    scenario: str
    mode: str
    wall_s: float
    jobs: list[JobResult]
    counters: dict[str, float] = field(default_factory=dict)
    round: int = 0  # which round of `run_rounds` it belongs to


def run_rounds(
    scenarios: list[Scenario],
    modes: list[Mode],
    main_modes: set[str],
    model: str,
    rtt_s: float,
    log_dir: Path,
    rounds: int = 1,
    extra_flags: tuple[str, ...] = (),
    server_root: Path | None = None,
) -> list[RunRecord]:
    """`run_all` `rounds` times, the mode order rotated by one each round: on a machine whose
    speed drifts with its neighbours, no mode always runs first or right after another."""
    records = []
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        records += run_all(scenarios, order, main_modes, model, rtt_s, log_dir, extra_flags,
                           server_root, round_index=r)  # fmt: skip
    return records


def run_all(
    scenarios: list[Scenario],
    modes: list[Mode],
    main_modes: set[str],
    model: str,
    rtt_s: float,
    log_dir: Path,
    extra_flags: tuple[str, ...] = (),
    server_root: Path | None = None,
    round_index: int = 0,
) -> list[RunRecord]:
    """Scenarios in all `modes` (those with `all_modes` False only in `main_modes`), one
    after another, each on its own server so no cache carries over. `server_root`, when given,
    is the source tree whose `server` package the child runs (`python -m server` from there).
    The records (and the server logs after the first round) carry `round_index`."""
    plan = [(s, m) for s in scenarios for m in modes if s.all_modes or m.name in main_modes]
    records = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for scenario, mode in tqdm(plan, desc="runs", unit="run"):
        log = log_dir / f"{scenario.name}.{mode.name}{f'.r{round_index}' if round_index else ''}.log"
        log.unlink(missing_ok=True)
        server = ServerProcess(model, *mode.flags, *extra_flags, log_path=log)
        with _cwd(server_root):
            server.start()
        try:
            assert server.process is not None
            pid = server.process.pid
            record = asyncio.run(_run_one(server.url, pid, scenario, mode, rtt_s))
            record.round = round_index
            records.append(record)
        finally:
            server.stop()
    return records


async def _run_one(
    url: str, pid: int, scenario: Scenario, mode: Mode, rtt_s: float
) -> RunRecord:
    model_id = await asyncio.to_thread(_model_id, url)
    await _warm_up(url, model_id)
    before = await asyncio.to_thread(read_counters, url)
    cpu_before = process_cpu_s(pid)
    bar = tqdm(total=len(scenario.jobs), desc=f"{scenario.name} / {mode.name}", unit="job",
               leave=False)  # fmt: skip
    start = time.perf_counter()
    try:
        if mode.api == "parrot":
            jobs = await run_parrot_jobs(url, scenario.jobs, rtt_s, bar.update)
        else:
            jobs = await run_openai_jobs(url, model_id, scenario.jobs, rtt_s, bar.update)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    after = await asyncio.to_thread(read_counters, url)
    counters = {COUNTERS[k]: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
    # CPU seconds the server used: on a shared machine, wall time also counts others' work
    counters["server_cpu_s"] = process_cpu_s(pid) - cpu_before
    return RunRecord(scenario.name, mode.name, wall, jobs, counters)


async def _warm_up(url: str, model_id: str) -> None:
    """One short request, so the first measured step does not pay for lazy initialisation."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client:
        await client.completions.create(
            model=model_id, prompt=WARMUP_PROMPT, max_tokens=4, temperature=0
        )


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the engines it runs
    with `--engine-process` are children of its fork server, so grandchildren), from Linux
    /proc; nan elsewhere."""
    if _stat_fields(pid) is None:
        return float("nan")
    stats = {int(p.parent.name): _stat_fields(int(p.parent.name))
             for p in Path("/proc").glob("[0-9]*/stat")}  # fmt: skip
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0, [pid]
    while todo:
        node = todo.pop()
        todo.extend(children.get(node, ()))
        fields = stats.get(node) or _stat_fields(node)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, ...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def read_counters(url: str) -> dict[str, float]:
    """Counter values of the server's /metrics (unlabelled samples only)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


@contextlib.contextmanager
def _cwd(path: Path | None):
    """The child resolves `-m server` from its working directory."""
    if path is None:
        yield
        return
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _model_id(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
        return json.load(resp)["data"][0]["id"]
