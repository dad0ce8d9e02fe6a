"""What a workload module provides, and how `benchmarks.run` finds it.

A workload is a module `benchmarks/workloads/NAME.py` with either
- a module-level `WORKLOAD`, a `Workload`: `scenarios(quick)` builds the jobs (pure data),
  `metrics(results)` turns each mode's job results into named numbers, and `targets` say which
  ratios the issue asks for; `benchmarks.run` runs it in every mode; or
- a `main(argv: list[str]) -> int` that drives its own runs (for workloads that are not `Job`
  graphs, e.g. a framework's pipeline); `benchmarks.run NAME` calls it with `--quick` and
  `--model` passed on.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.common.graph import JobResult, Scenario


@dataclass(frozen=True, slots=True)
class Metric:
    """A number a workload reports per mode."""

    name: str
    unit: str
    higher_is_better: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """A goal on Parrot's `metric`. With `versus` (a mode name) the value is Parrot's gain over
    that mode (baseline / Parrot for lower-is-better metrics, Parrot / baseline otherwise);
    without, it is Parrot's own value. The value must lie within [minimum, maximum]."""

    label: str
    metric: str
    versus: str | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.minimum is None and self.maximum is None:
            raise ValueError(f"target {self.label!r} needs a minimum or a maximum")


class Bound(float):
    """A metric value known from one side only, e.g. a rate a sweep never got past: `side` is
    ">=" (the true value is at least this) or "<" (the true value is below this)."""

    side: str

    def __new__(cls, value: float, side: str) -> Bound:
        if side not in (">=", "<"):
            raise ValueError(f"side must be '>=' or '<', got {side!r}")
        obj = super().__new__(cls, value)
        obj.side = side
        return obj

    def __repr__(self) -> str:
        return f"{self.side}{float(self)!r}"


def side_of(value: float) -> str:
    """The side of a `Bound` ("=" for a measured value)."""
    return value.side if isinstance(value, Bound) else "="


# results of one mode: scenario name -> the results of its jobs
ModeResults = dict[str, list[JobResult]]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    summary: str
    scenarios: Callable[[bool], list[Scenario]]
    metrics: Callable[[ModeResults], dict[str, float]]
    metric_specs: tuple[Metric, ...]
    baselines: tuple[str, ...]
    ablations: tuple[str, ...]
    targets: tuple[Target, ...]


def load_workload(name: str) -> Workload | Callable[[list[str]], int]:
    """The `WORKLOAD` of `benchmarks.workloads.<name>`, else its `main`."""
    if name not in workload_names():
        raise ValueError(f"unknown workload {name!r}; available: {', '.join(workload_names())}")
    module = importlib.import_module(f"benchmarks.workloads.{name}")
    workload = getattr(module, "WORKLOAD", None)
    if isinstance(workload, Workload):
        return workload
    main = getattr(module, "main", None)
    if workload is None and callable(main):
        return main
    raise TypeError(
        f"benchmarks/workloads/{name}.py must define WORKLOAD = Workload(...) or main(argv)"
    )


def workload_names() -> list[str]:
    import benchmarks.workloads as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
