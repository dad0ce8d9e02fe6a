"""Common leading runs of token lists (pure).

The KV that calls actually share is the longest common *token* prefix of their fully tokenized
prompts (never per-segment tokens), so a forked call sees exactly the tokens a plain request
with the same text would.
"""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common leading run of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
