"""The text a constraint forces next: the bytes that every continuation of the constrained text
starts with (the rest of a JSON key, a regex's literal part, the tail of a choice). The engine
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


class ByteAutomaton(Protocol):
    """What the constraint automata (JSON, schema, choices, regex, grammar) share."""

    @property
    def complete(self) -> bool: ...

    def copy(self) -> Self: ...

    def feed(self, b: int) -> bool: ...


def forced_text(text: ByteAutomaton, limit: int) -> bytes:
    """The bytes every continuation of `text` starts with, at most `limit`: empty where two
    bytes may follow or where the text may end (an end-of-sequence is then one of the ways on)."""
    state = text.copy()
    out = bytearray()
    while len(out) < limit and not state.complete:
        only: tuple[int, ByteAutomaton] | None = None
        for b in _PROBES:
            probe = state.copy()
            if probe.feed(b):
                if only is not None:
                    return bytes(out)
                only = (b, probe)
        if only is None:
            break
        out.append(only[0])
        state = only[1]
    return bytes(out)
