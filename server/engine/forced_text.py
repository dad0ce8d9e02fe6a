"""The text a constraint forces next: the bytes that every continuation of the constrained text
starts with (the rest of a JSON key, a regex's literal parts, the tail of a choice). The engine
drafts its tokens (speculative decoding), so the step that verifies them takes a whole forced
run at once instead of a token a step ("jump-forward" decoding)."""

from __future__ import annotations

import string
from typing import Protocol, Self

# The bytes probed at each place, likeliest to fit first, so that a place where two fit (most
# places: inside a string, between JSON tokens) is told after a few probes. Only ASCII: a forced
# run ends where a byte past ASCII may follow, and a place where one fits while a single ASCII
# byte does is taken as forced, a guess the step's verification corrects (drafts are checked).
_PROBES = bytes(
    dict.fromkeys(
        b'" ,:{}[]\n' + string.ascii_lowercase.encode() + string.digits.encode()
        + string.ascii_uppercase.encode() + bytes(range(32, 127)) + b"\t\r"
    )
)  # fmt: skip
_WHITESPACE = frozenset(b" \t\n\r")
_SPACE_AFTER = frozenset(b":,")  # JSON's usual spacing: ": " and ", "
_LOOK_BACK = 4096  # bytes of the text searched for its spacing


class ByteAutomaton(Protocol):
    """What the constraint automata (JSON, schema, choices, regex, grammar) share."""

    @property
    def complete(self) -> bool: ...

    def copy(self) -> Self: ...

    def feed(self, b: int) -> bool: ...


def forced_text(text: ByteAutomaton, limit: int, before: bytes = b"") -> bytes:
    """The bytes every continuation of `text` starts with, at most `limit`: empty where two
    bytes may follow or where the text may end (an end-of-sequence is then one of the ways on).

    Where whitespace may come but need not, before the one other byte that may (JSON between
    its tokens), the run goes on with the spacing the text so far (`before`) put between the
    same two bytes the last time, or JSON's usual one (a space after ':' and ',', none
    elsewhere) the first time. That part is a guess, which the step's verification confirms
    or refutes like any draft."""
    state = text.copy()
    out = bytearray()
    while len(out) < limit and not state.complete:
        solid: tuple[int, ByteAutomaton] | None = None  # the one other byte that fits
        spaces: list[tuple[int, ByteAutomaton]] = []
        for b in _PROBES:
            probe = state.copy()
            if not probe.feed(b):
                continue
            if b in _WHITESPACE:
                spaces.append((b, probe))
            elif solid is None:
                solid = (b, probe)
            else:
                return bytes(out)  # two ways on
        if solid is None:
            if len(spaces) != 1:
                break  # nothing fits, or only a choice of whitespace
            out.append(spaces[0][0])
            state = spaces[0][1]
        elif not spaces:
            out.append(solid[0])
            state = solid[1]
        else:
            run = _spacing(before + out, solid[0])
            spaced = state.copy()
            if run and all(spaced.feed(b) for b in run):
                out += run  # the byte after it is found on the next turn
                state = spaced
            else:
                out.append(solid[0])
                state = solid[1]
    return bytes(out[:limit])


def _spacing(text: bytes, then: int) -> bytes:
    """The whitespace to put after `text` before the byte `then`: what came between the same two
    bytes the last time (within the last 4 KB), else JSON's usual spacing; none right after
    whitespace."""
    if not text or text[-1] in _WHITESPACE:
        return b""
    first, floor = text[-1], max(0, len(text) - _LOOK_BACK)
    at = text.rfind(then, floor, len(text) - 1)
    while at > floor:
        start = at
        while start > floor and text[start - 1] in _WHITESPACE:
            start -= 1
        if start > floor and text[start - 1] == first:
            return text[start:at]
        at = text.rfind(then, floor, at)
    return b" " if first in _SPACE_AFTER else b""
