"""Which engine runs a unit of work: the one holding its prefix, then the least loaded. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(slots=True)
class EngineLoad:
    """What the server has placed on one engine and not seen finish yet."""

    index: int
    running_calls: int = 0
    queued_tokens: int = 0  # prompt and generation tokens of those calls


def choose_engine(
    loads: list[EngineLoad], affinity: Mapping[int, int], max_calls: int
) -> int | None:
    """The engine for a unit, among those with room for one more call (None: it waits).

    `affinity` maps engines to how many prompt tokens of the unit they already hold; the deepest
    holder wins, ties and the rest go to the least loaded (fewest queued tokens, then calls).
    When the deepest holder is full, the unit waits for it (see `worth_waiting`) unless an
    engine with room is less loaded by more than the tokens it would compute again.
    """
    open_engines = [load for load in loads if load.running_calls < max_calls]
    if not open_engines:
        return None
    best = min(open_engines, key=lambda load: _rank(load, affinity))
    holder = min(loads, key=lambda load: _rank(load, affinity))  # full or not
    if holder is not best and worth_waiting(holder, best, affinity):
        return None
    return best.index


def worth_waiting(holder: EngineLoad, other: EngineLoad, affinity: Mapping[int, int]) -> bool:
    """Whether a unit should wait for a slot on the full `holder` rather than run on `other`
    now: when the prompt tokens it would compute again on `other` outnumber the tokens by which
    `other` is less loaded. A call's prefix filled ahead of its input (a long document) is
    then not thrown away for a slot freed by a near-equal engine, which under steady load is
    any engine about half the time; an engine with much more room (many calls' worth of
    tokens) still takes it at once. Both sides are estimates in tokens: queued tokens count
    mostly generation, which costs more per token than prefill, so this errs toward not
    waiting."""
    saved = affinity.get(holder.index, 0) - affinity.get(other.index, 0)
    return saved > 0 and saved > holder.queued_tokens - other.queued_tokens


def _rank(load: EngineLoad, affinity: Mapping[int, int]) -> tuple[int, int, int, int]:
    return (-affinity.get(load.index, 0), load.queued_tokens, load.running_calls, load.index)
