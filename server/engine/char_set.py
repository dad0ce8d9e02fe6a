"""A set of characters, as the automata of regular expressions and grammars read them: the label
of an NFA edge."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CharSet:
    """Characters as sorted code-point ranges and Unicode classes ("d", "w", "s", as `re`
    reads them in str patterns), or the complement of those."""

    ranges: tuple[tuple[int, int], ...]
    negated: bool = False
    classes: str = ""

    def __contains__(self, code: int) -> bool:
        inside = any(lo <= code <= hi for lo, hi in self.ranges) or any(
            IN_CLASS[c](chr(code)) for c in self.classes
        )
        return inside != self.negated

    def may_hold(self, lo: int, hi: int) -> bool:
        """Whether some character in [lo, hi] is in the set."""
        spans = [*self.ranges, *(r for c in self.classes for r in _class_spans(c))]
        if not self.negated:
            return any(a <= hi and lo <= b for a, b in spans)
        reached = lo  # negated: some character in [lo, hi] that no span covers
        for a, b in sorted(spans):
            if a > reached:
                break
            reached = max(reached, b + 1)
        return reached <= hi

    def holds_any(self) -> bool:
        """Whether the set holds some character text can carry (UTF-8 encodes no surrogate
        half, so a class of only those is as empty as `[^\\x00-\\U0010FFFF]`)."""
        return self.may_hold(0, 0xD7FF) or self.may_hold(0xE000, 0x10FFFF)


# the Unicode classes of `\d \w \s` (as `re` reads them in str patterns), by letter
IN_CLASS: dict[str, Callable[[str], bool]] = {
    "d": str.isdecimal,
    "w": lambda c: c.isalnum() or c == "_",
    "s": str.isspace,
}


@functools.cache
def _class_spans(name: str) -> tuple[tuple[int, int], ...]:
    """The code-point ranges of a Unicode class (built once: 0.07-0.11 s over all of Unicode): a
    byte that starts a character is refused unless some character of the class starts so."""
    test, spans, start = IN_CLASS[name], [], None
    for code in range(0x110000):
        inside = test(chr(code))
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            spans.append((start, code - 1))
            start = None
    if start is not None:
        spans.append((start, 0x10FFFF))
    return tuple(spans)
