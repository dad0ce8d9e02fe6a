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
    """The engine for a unit, among those with room for one more call (None: all full).

    `affinity` maps engines to how many prompt tokens of the unit they already hold; the deepest
    holder wins, ties and the rest go to the least loaded (fewest queued tokens, then calls).
    """
    open_engines = [load for load in loads if load.running_calls < max_calls]
    if not open_engines:
        return None
    best = min(
        open_engines,
        key=lambda load: (
            -affinity.get(load.index, 0),
            load.queued_tokens,
            load.running_calls,
            load.index,
        ),
    )
    return best.index
