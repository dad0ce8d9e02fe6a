"""How deeply parsed JSON nests, found without recursion: code that walks JSON recursively
(schema compilers, validators) would otherwise meet a RecursionError, a 500, on a document
nested a few hundred levels deep, which a client can send in a few kilobytes."""

from __future__ import annotations

from typing import Any


def path_deeper_than(data: Any, limit: int) -> tuple[object, ...] | None:
    """The path (keys and indexes) of the first container nested more than `limit` containers
    deep in `data` (the outermost is depth 1), or None when none is."""
    if not isinstance(data, (dict, list)):
        return None
    todo: list[tuple[Any, tuple[object, ...]]] = [(data, ())]
    while todo:
        value, path = todo.pop()
        if len(path) >= limit:
            return path
        children = value.items() if isinstance(value, dict) else enumerate(value)
        # only containers go on: a prompt of 100k token ids costs one pass, no paths
        todo.extend((c, (*path, k)) for k, c in children if isinstance(c, (dict, list)))
    return None


def shown_path(path: tuple[object, ...], sep: str = ".", most: int = 6) -> str:
    """`path` as text (parts joined by `sep`), its middle elided when it is long."""
    parts = [str(p) for p in path]
    if len(parts) > most:
        parts = [*parts[: most // 2], "...", *parts[-most // 2 :]]
    return sep.join(parts)
