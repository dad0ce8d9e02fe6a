"""The states and moves of an NFA over characters (a regular expression's, a grammar's rules'):
built as lists, then packed for the life of the compiled pattern.

Packed because compiled patterns are cached for as long as the process lives, and every full
garbage collection walks what they hold with the event loop or the step loop stopped. Built as
lists of (CharSet, state) pairs, a pattern near its size cap is ~200,000 tracked objects (a large
grammar ~500,000); a few of them made a full collection take 0.6 s. Packed, each state's moves
are tuples of ints, which the collector stops tracking after one pass, over one table of the
pattern's distinct character sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.engine.char_set import CharSet


@dataclass(frozen=True, slots=True)
class CharNfa:
    """Per state: `edges`, (index in `charsets`, next state) for each character move, and
    `empty`, the states reached without reading."""

    charsets: tuple[CharSet, ...]
    edges: tuple[tuple[tuple[int, int], ...], ...]
    empty: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.edges)


class CharNfaBuilder:
    """Collects states and moves; `too_large()` is raised past `max_states` states."""

    def __init__(self, max_states: int, too_large: Callable[[], Exception]) -> None:
        self._max_states = max_states
        self._too_large = too_large
        self._edges: list[list[tuple[CharSet, int]]] = []
        self._empty: list[list[int]] = []

    def __len__(self) -> int:
        return len(self._edges)

    def new_state(self) -> int:
        if len(self._edges) >= self._max_states:
            raise self._too_large()
        self._edges.append([])
        self._empty.append([])
        return len(self._edges) - 1

    def edge(self, source: int, chars: CharSet, target: int) -> None:
        """A move on a character of `chars`; none where it holds no character, so that a
        pattern's checks (what can reach its end) see that nothing gets past it."""
        if chars.holds_any():
            self._edges[source].append((chars, target))

    def empty(self, source: int, target: int) -> None:
        self._empty[source].append(target)

    def packed(self) -> CharNfa:
        index: dict[CharSet, int] = {}  # equal sets (each copy of a repeat makes its own) once
        edges = tuple(
            tuple((index.setdefault(chars, len(index)), t) for chars, t in moves)
            for moves in self._edges
        )
        return CharNfa(tuple(index), edges, tuple(map(tuple, self._empty)))
