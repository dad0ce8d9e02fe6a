"""The modes a workload runs in: Parrot, the request-level baselines, and Parrot with one
optimisation off (ablations). Every engine cap is a server flag, the same for all modes that
share a setting.

Engine settings (chosen for SmolLM2-135M on 2 CPU cores):
- throughput-tuned: 2048 batched tokens per step, up to 64 running sequences (the engine's
  default token budget). Parrot runs with these caps too.
- latency-tuned: 256 batched tokens per step, up to 4 running sequences, so each running request
  decodes in a small batch (fast steps) while others wait.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Api = Literal["parrot", "openai"]

THROUGHPUT_CAPS = ("--max-num-batched-tokens", "2048", "--max-num-seqs", "64")
LATENCY_CAPS = ("--max-num-batched-tokens", "256", "--max-num-seqs", "4")


@dataclass(frozen=True, slots=True)
class Mode:
    """How one run is served and driven: the API the client uses and the server's flags."""

    name: str
    label: str
    api: Api
    flags: tuple[str, ...]
    ablation: str | None = None


@dataclass(frozen=True, slots=True)
class Ablation:
    """One Parrot optimisation and the server flags that may switch it off (the first one the
    server's --help lists is used; flag names of work in progress differ in spelling)."""

    name: str
    what: str
    flags: tuple[str, ...]


# One place to list the ablations. A workload names those that matter to it.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation("objective_deduction", "latency/throughput objectives deduced from the graph",
             ("--disable-objective-deduction", "--no-objective-deduction")),
    Ablation("task_groups", "map stages scheduled as one group",
             ("--disable-task-groups", "--no-task-groups")),
    Ablation("prefix_sharing", "calls with a common prefix fork one context",
             ("--disable-prefix-sharing", "--no-prefix-sharing")),
    Ablation("pipelined_prefill", "ready leading segments prefilled before inputs arrive",
             ("--disable-pipelined-prefill", "--no-pipelined-prefill")),
    Ablation("app_scheduler", "app-centric ordering and placement (FIFO when off)",
             ("--no-app-scheduling", "--disable-app-scheduler", "--no-app-scheduler")),
    Ablation("cascade", "shared-prefix attention (prefix attended once per batch)",
             ("--no-cascade", "--disable-cascade")),
    Ablation("prefix_cache", "engine token-level prefix cache", ("--no-prefix-cache",)),
    Ablation("background_chunks", "throughput-only prefill in small chunks at all times",
             ("--background-prefill-chunk=0",)),
    Ablation("latency_hold", "other work held back between chained latency-critical calls",
             ("--latency-hold-ms=0",)),
    Ablation("ride_along", "other work's decode rows ride along latency-critical steps",
             ("--latency-other-decode-rows=0",)),
    Ablation("step_pausing", "a step of other work pauses between layers for latency work",
             ("--no-step-pausing",)),
)  # fmt: skip

PARROT = Mode("parrot", "Parrot", "parrot", THROUGHPUT_CAPS)
BASELINE_THROUGHPUT = Mode(
    "baseline_throughput", "OpenAI API, throughput-tuned", "openai", THROUGHPUT_CAPS
)
BASELINE_LATENCY = Mode("baseline_latency", "OpenAI API, latency-tuned", "openai", LATENCY_CAPS)
BASELINE_NO_CACHE = Mode(
    "baseline_no_cache",
    "OpenAI API, throughput-tuned, prefix cache off",
    "openai",
    (*THROUGHPUT_CAPS, "--no-prefix-cache"),
)
BASELINES = {m.name: m for m in (BASELINE_THROUGHPUT, BASELINE_LATENCY, BASELINE_NO_CACHE)}


def ablation_mode(ablation: Ablation, accepted: frozenset[str]) -> Mode | None:
    """Parrot with `ablation` off, or None when the server accepts none of its flags."""
    flag = next((f for f in ablation.flags if f.split("=")[0] in accepted), None)
    if flag is None:
        return None
    return Mode(f"parrot_no_{ablation.name}", f"Parrot, {ablation.name} off", "parrot",
                (*THROUGHPUT_CAPS, flag), ablation=ablation.name)  # fmt: skip


def ablation_by_name(name: str) -> Ablation:
    for ablation in ABLATIONS:
        if ablation.name == name:
            return ablation
    raise ValueError(f"unknown ablation {name!r}; known: {[a.name for a in ABLATIONS]}")


@functools.cache
def server_flags(server_root: Path | None = None) -> frozenset[str]:
    """The long flags `python -m server --help` lists (run in `server_root` when given)."""
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=server_root,
    )
    if out.returncode != 0:
        raise RuntimeError(f"`python -m server --help` failed:\n{out.stderr}")
    return parse_help_flags(out.stdout)


def parse_help_flags(help_text: str) -> frozenset[str]:
    """Long options (`--name`) mentioned in an argparse help text."""
    flags = set()
    for word in help_text.replace(",", " ").replace("[", " ").replace("]", " ").split():
        if word.startswith("--") and len(word) > 2:
            flags.add(word.split("=")[0])
    return frozenset(flags)
