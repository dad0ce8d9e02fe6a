"""Turn run records into per-mode metrics, gains over each mode, target checks, a text table,
a JSON file and a PNG plot."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common.graph import CallResult
from benchmarks.common.harness import RunRecord
from benchmarks.common.modes import Mode
from benchmarks.common.workload import Bound, Metric, ModeResults, Target, Workload, side_of

WORK_COUNTERS = ("generated_tokens", "prefill_tokens", "cached_tokens", "preemptions",
                 "cascade_saved_tokens", "paused_steps", "server_cpu_s")  # fmt: skip
# the mode whose calls every other mode's are compared with, call by call
REFERENCE = "baseline_throughput"


@dataclass(frozen=True, slots=True)
class SameWork:
    """A mode's calls against the reference mode's, call by call (same scenario, job and
    call): `differ` of `calls` produced another text or token count; `prompts` of those had
    another prompt length (an earlier call's output changed the prompt, or the prompt is not
    the same)."""

    calls: int
    differ: int = 0
    prompts: int = 0
    examples: tuple[str, ...] = ()  # the first few differing calls, "scenario/job/call"
    # jobs whose calls are not the reference's (one side lacks the job or some of its calls):
    # the modes did not run the same graph, and the run fails once its results are saved
    missing: tuple[str, ...] = ()
    reference: bool = False  # the mode compared with (its later rounds with its first)

    @property
    def label(self) -> str:
        if self.missing:
            return f"NO: {len(self.missing)} jobs ran other calls"
        if not self.calls:
            return "(the reference)" if self.reference else "no calls compared"
        if not self.differ:
            return "yes"
        prompts = f", {self.prompts} with another prompt length" if self.prompts else ""
        return f"{self.differ} of {self.calls} calls differ{prompts}"


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """`value` and its `side`: "=" measured, ">=" / "<=" a bound (a metric past the end of
    a sweep), "?" unknown (both sides bounds the same way). `rounds`: the same check in each
    round, when there were several (`value` is then from the medians of the rounds)."""

    label: str
    value: float
    minimum: float | None
    maximum: float | None
    side: str = "="
    rounds: tuple[TargetCheck, ...] = ()

    @property
    def verdict(self) -> str:
        """"met", "MISSED", or "undecided" when a bound leaves both possible; over several
        rounds "within noise" when some rounds meet it and others miss it."""
        if len(self.rounds) > 1:
            seen = {c.verdict for c in self.rounds}
            if {"met", "MISSED"} <= seen:
                return "within noise"
            return seen.pop() if len(seen) == 1 else "undecided"
        if math.isnan(self.value) or self.side == "?":
            return "undecided" if self.side == "?" else "MISSED"
        low = self.minimum is None or self.value >= self.minimum
        high = self.maximum is None or self.value <= self.maximum
        if self.side == "=":
            return "met" if low and high else "MISSED"
        if self.side == ">=":  # the true value is this or more
            if self.maximum is not None and self.value > self.maximum:
                return "MISSED"
            return "met" if low and self.maximum is None else "undecided"
        # "<=": the true value is this or less
        if self.minimum is not None and self.value < self.minimum:
            return "MISSED"
        return "met" if high and self.minimum is None else "undecided"

    @property
    def met(self) -> bool:
        return self.verdict == "met"

    @property
    def range(self) -> tuple[float, float] | None:
        """The lowest and highest value over the rounds (None with one round)."""
        values = [c.value for c in self.rounds if not math.isnan(c.value)]
        return (min(values), max(values)) if len(self.rounds) > 1 and values else None


@dataclass(slots=True)
class Report:
    workload: str
    modes: list[Mode]
    metrics: dict[str, dict[str, float]]  # mode -> metric -> value
    # mode -> counter -> total over the scenarios that every mode ran (comparable across modes)
    counters: dict[str, dict[str, float]]
    checks: list[TargetCheck]
    specs: tuple[Metric, ...]
    common_scenarios: list[str]
    # mode -> its calls against the REFERENCE mode's (empty when that mode did not run)
    same_work: dict[str, SameWork] = field(default_factory=dict)
    # each round's metrics (mode -> metric -> value); `metrics` holds their medians
    rounds: list[dict[str, dict[str, float]]] = field(default_factory=list)


def build_report(workload: Workload, modes: list[Mode], records: list[RunRecord]) -> Report:
    """Metrics and counters per mode: with several rounds, the median over the rounds of each
    (and each target checked per round too)."""
    rounds = [[r for r in records if r.round == k] for k in sorted({r.round for r in records})]
    measured = [_measure(workload, modes, runs) for runs in rounds or [[]]]
    metrics = {m.name: _medians([x[0][m.name] for x in measured]) for m in modes}
    counters = {m.name: _medians([x[1][m.name] for x in measured]) for m in modes}
    common = set.intersection(*(x[2] for x in measured))
    specs = {m.name: m for m in workload.metric_specs}
    checks = []
    for t in workload.targets:
        per_round = tuple(_check(t, x[0], specs) for x in measured) if len(measured) > 1 else ()
        checks.append(dataclasses.replace(_check(t, metrics, specs), rounds=per_round))
    return Report(workload.name, modes, metrics, counters, checks, workload.metric_specs,
                  sorted(common), compare_work(records), [x[0] for x in measured])  # fmt: skip


def _measure(
    workload: Workload, modes: list[Mode], records: list[RunRecord]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], set[str]]:
    """One round's metrics and counters per mode, and the scenarios every mode ran."""
    metrics: dict[str, dict[str, float]] = {}
    counters: dict[str, dict[str, float]] = {}
    ran = [{r.scenario for r in records if r.mode == m.name} for m in modes]
    common = set.intersection(*ran) if ran else set()
    for mode in modes:
        runs = [r for r in records if r.mode == mode.name]
        results: ModeResults = {r.scenario: r.jobs for r in runs}
        metrics[mode.name] = workload.metrics(results)
        counters[mode.name] = {
            c: sum(r.counters.get(c, math.nan) for r in runs if r.scenario in common)
            for c in WORK_COUNTERS
        }
        # the calls' prompt tokens as the API reported them: what prefill + cached should sum to
        counters[mode.name]["prompt_tokens"] = sum(
            c.prompt_tokens for r in runs if r.scenario in common for j in r.jobs
            for c in j.calls.values()
        )  # fmt: skip
    return metrics, counters, common


def _medians(values: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over the rounds of its measured values (nan where none is); a
    median of bounds is a bound the same way (nan where rounds bound it both ways)."""
    if len(values) == 1:
        return values[0]
    out = {}
    for key in dict.fromkeys(k for v in values for k in v):
        got = [v[key] for v in values if key in v and not math.isnan(v[key])]
        sides = {side_of(x) for x in got} - {"="}
        median = float(statistics.median(got)) if got else math.nan
        out[key] = median if not sides else Bound(median, sides.pop()) if len(sides) == 1 else (
            math.nan)  # fmt: skip
    return out


def gain_range(report: Report, mode: str, metric: str) -> tuple[float, float] | None:
    """The lowest and highest of Parrot's gain over `mode` on `metric`, round by round (None
    with one round, or none measured)."""
    spec = next(s for s in report.specs if s.name == metric)
    gains = [gain(r.get("parrot", {}).get(metric, math.nan), r[mode].get(metric, math.nan),
                  spec.higher_is_better) for r in report.rounds if mode in r]  # fmt: skip
    gains = [g for g in gains if not math.isnan(g)]
    return (min(gains), max(gains)) if len(report.rounds) > 1 and gains else None


def compare_work(records: list[RunRecord], reference: str = REFERENCE) -> dict[str, SameWork]:
    """Every mode's calls against `reference`'s, scenario by scenario (those both ran). Greedy
    outputs may still differ now and then (batches change the order of float sums, which can
    flip a token), so a difference is reported; a job or call missing on one side is listed
    in `missing` (the modes did not run the same graph: `main` fails after saving)."""
    ref: dict[str, RunRecord] = {}
    for r in records:  # its first round: its later rounds are compared with it too
        if r.mode == reference:
            ref.setdefault(r.scenario, r)
    if not ref:
        return {}
    out: dict[str, SameWork] = {}
    for mode in dict.fromkeys(r.mode for r in records):
        calls = differ = prompts = 0
        examples: list[str] = []
        missing: list[str] = []
        for run in (r for r in records if r.mode == mode and r.scenario in ref):
            if run is ref[run.scenario]:
                continue
            theirs = {j.name: j.calls for j in ref[run.scenario].jobs}
            ours = {j.name: j.calls for j in run.jobs}
            for job in sorted(theirs.keys() | ours.keys()):
                a, b = ours.get(job), theirs.get(job)
                if a is None or b is None or a.keys() != b.keys():
                    missing.append(
                        f"{run.scenario}: job {job!r} ran other calls in {mode} than in "
                        f"{reference}: {sorted(a or {})} against {sorted(b or {})}"
                    )
                    continue
                for name, call in a.items():
                    calls += 1
                    if call != b[name]:
                        differ += 1
                        prompts += call.prompt_tokens != b[name].prompt_tokens
                        where = f" (round {run.round + 1})" if run.round else ""
                        examples.append(f"{run.scenario}/{job}/{name}{where}")
        out[mode] = SameWork(
            calls, differ, prompts, tuple(examples[:5]), tuple(missing), mode == reference
        )
    return out


def gain(parrot: float, other: float, higher_is_better: bool) -> float:
    """How many times better Parrot's value is than `other`'s (nan when undefined)."""
    if any(math.isnan(v) for v in (parrot, other)) or min(parrot, other) <= 0:
        return math.nan
    return parrot / other if higher_is_better else other / parrot


def gain_side(parrot: float, other: float, higher_is_better: bool) -> str:
    """Whether `gain` of these values is the gain ("="), a lower bound (">="), an upper bound
    ("<=") or says nothing ("?"), when either value is a `Bound`."""
    up = {">=": 1, "<": -1, "=": 0}  # which way the true value lies from the shown one
    # a higher Parrot value raises the gain when higher is better; a higher other lowers it
    sign = 1 if higher_is_better else -1
    moves = {sign * up[side_of(parrot)], -sign * up[side_of(other)]} - {0}
    if not moves:
        return "="
    if len(moves) == 2:
        return "?"
    return ">=" if moves == {1} else "<="


def gains_over(report: Report, mode: str) -> dict[str, tuple[float, str]]:
    """Parrot's gain over `mode` per metric and its side (see `gain_side`), as the table's
    `gain` columns show them; none for Parrot itself."""
    if mode == "parrot":
        return {}
    parrot, values = report.metrics.get("parrot", {}), report.metrics[mode]
    out = {}
    for spec in report.specs:
        p, v = parrot.get(spec.name, math.nan), values.get(spec.name, math.nan)
        out[spec.name] = (gain(p, v, spec.higher_is_better),
                          gain_side(p, v, spec.higher_is_better))  # fmt: skip
    return out


def format_table(report: Report) -> str:
    """Rows are modes; per metric its value and Parrot's gain over that mode (x)."""
    head = ["mode"]
    for spec in report.specs:
        head += [f"{spec.name} ({spec.unit})", "gain"]
    head += ["gen tok", "prompt tok", "prefill tok", "cached tok", "cascade saved",
             "paused steps", "server cpu s"]
    if report.same_work:
        head.append(f"same work as {REFERENCE}")
    rows = [head]
    for mode in report.modes:
        row = [mode.name]
        values = report.metrics[mode.name]
        gains = gains_over(report, mode.name)
        for spec in report.specs:
            g, side = gains.get(spec.name, (math.nan, "="))
            shown = "" if math.isnan(g) else f"{_num(g)}x"
            if shown and side != "=":
                shown = "?" if side == "?" else f"{side}{shown}"
            spread = gain_range(report, mode.name, spec.name) if mode.name != "parrot" else None
            if shown and spread:
                shown += f" [{_num(spread[0])}-{_num(spread[1])}]"
            row += [_bounded(values.get(spec.name, math.nan)), shown]
        c = report.counters[mode.name]
        row += [_num(c[k]) for k in
                ("generated_tokens", "prompt_tokens", "prefill_tokens", "cached_tokens",
                 "cascade_saved_tokens", "paused_steps")]
        row.append(_num(c["server_cpu_s"]))
        if report.same_work:
            same = report.same_work.get(mode.name)
            row.append("-" if same is None else same.label)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    if report.common_scenarios:
        lines.append(f"(token and cpu columns: scenarios {', '.join(report.common_scenarios)}; "
                     "prompt tok: the calls' usage, = prefill + cached)")  # fmt: skip
    if len(report.rounds) > 1:
        lines.append(f"(median of {len(report.rounds)} rounds, the mode order rotated each "
                     "round; [low-high]: the gain in each round)")  # fmt: skip
    for mode, same in report.same_work.items():
        for line in same.missing:
            lines.append(f"ERROR: {line}")
        if same.differ:
            lines.append(f"WARNING: {mode} did other work than {REFERENCE}: {same.label}, "
                         f"e.g. {', '.join(same.examples)}")  # fmt: skip
    targets = [
        f"  [{c.verdict}] {c.label}: "
        + ("? (both values are bounds)" if c.side == "?" else
           f"{'' if c.side == '=' else c.side}{_num(c.value)}")
        + (f" [{_num(c.range[0])}-{_num(c.range[1])}]" if c.range else "")
        + (f" (want >= {c.minimum:g})" if c.minimum is not None else "")
        + (f" (want <= {c.maximum:g})" if c.maximum is not None else "")
        for c in report.checks
    ]
    return "\n".join([*lines, "targets:", *targets])


def write_json(path: Path, report: Report, records: list[RunRecord], meta: dict[str, Any]) -> None:
    """Everything measured: per-mode metrics and counters, target checks, every job's timing."""
    data = {
        **meta,
        "workload": report.workload,
        "modes": {
            m.name: {
                "label": m.label,
                "api": m.api,
                "flags": list(m.flags),
                "metrics": report.metrics[m.name],
                # metrics known from one side only (">=": at least; "<": below)
                "bounds": {k: side_of(v) for k, v in report.metrics[m.name].items()
                           if side_of(v) != "="},
                # Parrot's gain over this mode, as the table's gain columns (nan: none)
                "gains": {k: g for k, (g, _) in gains_over(report, m.name).items()},
                "gain_bounds": {k: side for k, (_, side) in gains_over(report, m.name).items()
                                if side != "="},
                # the lowest and highest gain over the rounds (with several)
                "gain_ranges": {} if m.name == "parrot" else {
                    k.name: gain_range(report, m.name, k.name) for k in report.specs},
                "counters": report.counters[m.name],
                # its calls against the reference mode's ("yes" or how many differ)
                "same_work": None if m.name not in report.same_work else {
                    "reference": REFERENCE, "label": report.same_work[m.name].label,
                    **asdict(report.same_work[m.name])},
            }
            for m in report.modes
        },
        "targets": [
            {**{k: v for k, v in asdict(c).items() if k != "rounds"}, "met": c.met,
             "verdict": c.verdict, "range": c.range,
             "round_values": [r.value for r in c.rounds]}  # fmt: skip
            for c in report.checks
        ],
        # each round's metrics per mode (the modes' `metrics` are their medians)
        "rounds": report.rounds,
        "runs": [
            {
                "scenario": r.scenario,
                "mode": r.mode,
                "round": r.round,
                "wall_s": r.wall_s,
                "counters": r.counters,
                "jobs": [
                    {"name": j.name, "app": j.app, "start_s": j.start_s, "end_s": j.end_s,
                     "requested_tokens": j.requested_tokens,
                     "generated_tokens": j.generated_tokens,
                     "output_chars": {k: len(v) for k, v in j.outputs.items()},
                     "calls": {k: _call_json(c) for k, c in j.calls.items()}}  # fmt: skip
                    for j in r.jobs
                ],
            }
            for r in records
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_plot(path: Path, report: Report) -> None:
    """One bar chart per metric, a bar per mode (Parrot first, ablations hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = report.specs
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 4.2), squeeze=False)
    names = [m.name for m in report.modes]
    colors = ["tab:green" if m.api == "parrot" else "tab:gray" for m in report.modes]
    hatches = ["//" if m.ablation else "" for m in report.modes]
    for ax, spec in zip(axes[0], specs, strict=True):
        values = [report.metrics[n].get(spec.name, math.nan) for n in names]
        bars = ax.bar(range(len(names)), [0 if math.isnan(v) else v for v in values],
                      color=colors)  # fmt: skip
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        for x, (v, note) in enumerate(zip(values, bar_notes(values), strict=True)):
            if note:  # a mode that did not run this metric is not a zero bar
                ax.text(x, 0 if math.isnan(v) else v, note, ha="center", va="bottom",
                        rotation=90 if math.isnan(v) else 0, fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        arrow = "higher is better" if spec.higher_is_better else "lower is better"
        ax.set_title(f"{spec.name} ({spec.unit})\n{arrow}", fontsize=9)
    fig.suptitle(report.workload)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bar_notes(values: list[float]) -> list[str]:
    """What a bar needs written on it: "not run" where the mode has no value (drawn at 0, it
    would read as the best latency), the side of a bound (">=", "<")."""
    return ["not run" if math.isnan(v) else "" if side_of(v) == "=" else side_of(v)
            for v in values]  # fmt: skip


def _check(t: Target, metrics: dict[str, dict[str, float]], specs: dict[str, Metric]) -> TargetCheck:
    parrot = metrics.get("parrot", {}).get(t.metric, math.nan)
    if t.versus is None:
        side = side_of(parrot)
        return TargetCheck(t.label, parrot, t.minimum, t.maximum, "<=" if side == "<" else side)
    other = metrics.get(t.versus, {}).get(t.metric, math.nan)
    higher = specs[t.metric].higher_is_better
    return TargetCheck(t.label, gain(parrot, other, higher), t.minimum, t.maximum,
                       gain_side(parrot, other, higher))  # fmt: skip


def _call_json(call: CallResult) -> dict[str, int | str]:
    """A call's usage, and its text as a length and a hash (outputs compared, JSON small)."""
    digest = hashlib.sha256(call.text.encode()).hexdigest()[:16]
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
            "chars": len(call.text), "sha256": digest}  # fmt: skip


def _bounded(v: float) -> str:
    side = side_of(v)
    return _num(v) if side == "=" else f"{side}{_num(v)}"


def _num(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
