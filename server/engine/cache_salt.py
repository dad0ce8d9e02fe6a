"""vLLM's `cache_salt`: which contexts may share cached KV blocks."""

from __future__ import annotations


def check_cache_salt(salt: object, parent: int | None = None) -> None:
    """ValueError unless `salt` is None or a non-empty string (as vLLM requires), and None
    for a fork (which keeps its parent's)."""
    if salt is None:
        return
    if not isinstance(salt, str) or not salt:
        raise ValueError(f"cache_salt must be a non-empty string if given, got {salt!r}")
    if parent is not None:
        raise ValueError("a fork keeps its parent's cache_salt: give none with a parent")
