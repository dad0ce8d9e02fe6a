"""Which calls of one batch share a leading run of prompt tokens, to fork them from one context.

Pure. The KV that is actually shared is the longest common *token* prefix of the fully
tokenized prompts (never per-segment tokens), so a forked call sees exactly the tokens a plain
request with the same text would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    """Members (indices into the planned prompts) fork from one context holding `num_tokens`."""

    members: tuple[int, ...]
    num_tokens: int


def plan_shared_prefixes(prompts: list[list[int]], min_tokens: int) -> list[PrefixGroup]:
    """Group prompts whose common token prefix is at least `min_tokens` long.

    Prompts are sorted so that neighbours share the longest prefixes; a run of neighbours forms
    a group sharing the run's minimum common prefix. A neighbour joins the run when its common
    prefix reaches `min_tokens` and at least half of what the run shares (so one far-off prompt
    does not shrink a long shared document to a few tokens). Each
    member keeps at least one token of its own to fill, so its first generated token is computed
    from its own prefill.
    """
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[PrefixGroup] = []
    run = order[:1]
    shared = 0
    for prev, cur in zip(order, order[1:], strict=False):
        common = min(
            common_prefix_len(prompts[prev], prompts[cur]),
            len(prompts[prev]) - 1,
            len(prompts[cur]) - 1,
        )
        if common >= min_tokens and (len(run) == 1 or 2 * common >= shared):
            shared = common if len(run) == 1 else min(shared, common)
            run.append(cur)
            continue
        _close(run, shared, groups)
        run, shared = [cur], 0
    _close(run, shared, groups)
    return groups


def _close(run: list[int], shared: int, groups: list[PrefixGroup]) -> None:
    if len(run) >= 2:
        groups.append(PrefixGroup(tuple(sorted(run)), shared))


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common leading run of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
