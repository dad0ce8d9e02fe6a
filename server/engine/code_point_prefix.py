"""The UTF-8 side of the automata that follow characters (regular expressions, grammars): bytes
come one at a time, and a character's lead byte is refused at once when no character it can
begin would be taken, not when the character completes."""

from __future__ import annotations

SURROGATES = (0xD800, 0xDFFF)  # UTF-16's halves: no UTF-8 encodes them (RFC 3629)
CONTINUATION = (0x80, 0xBF)
# A second byte narrower than a continuation byte's range, where the lead byte alone allows
# an overlong form, a surrogate half or a code point past U+10FFFF (RFC 3629's table).
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def second_byte_range(lead: int) -> tuple[int, int]:
    """The bytes that may follow the lead byte `lead` (0xC2-0xF4) in well-formed UTF-8."""
    return _SECOND_BYTE.get(lead, CONTINUATION)


class CodePointPrefix:
    """Assembles code points from UTF-8 bytes for a subclass that steps on characters:
    `_step(code)` takes a whole character, `_may_take(lo, hi)` says whether some character in
    [lo, hi] could be taken now."""

    __slots__ = ("_pending", "_need", "_least")

    def __init__(self) -> None:
        self._pending = 0  # the code point being assembled from UTF-8 bytes
        self._need = 0  # its continuation bytes still due
        self._least = 0  # the smallest code point its length encodes

    def feed_all(self, data: bytes) -> bool:
        return all(self.feed(b) for b in data)

    def feed(self, b: int) -> bool:
        if self._need:
            if not 0x80 <= b <= 0xBF:
                return False
            self._pending = self._pending << 6 | (b & 0x3F)
            self._need -= 1
            if self._need:
                return self._may_complete()
            code = self._pending
        elif b < 0x80:
            code = b
        elif 0xC2 <= b <= 0xF4:
            self._need = 1 if b <= 0xDF else 2 if b <= 0xEF else 3
            self._pending = b & (0x1F if b <= 0xDF else 0x0F if b <= 0xEF else 0x07)
            self._least = (0x80, 0x800, 0x10000)[self._need - 1]
            return self._may_complete()
        else:
            return False
        return self._step(code)

    def take(self, code: int) -> bool:
        """Take a whole character given as its code point (between characters only)."""
        assert not self._need
        return self._step(code)

    def partial_range(self) -> tuple[int, int] | None:
        """The code points that the bytes of an unfinished character can still become (None
        between characters)."""
        if not self._need:
            return None
        shift = 6 * self._need
        lo = max(self._pending << shift, self._least)
        return lo, min((self._pending << shift) | ((1 << shift) - 1), 0x10FFFF)

    def could_take(self, lo: int, hi: int) -> bool:
        """Whether some character in [lo, hi] could be taken now (between characters)."""
        return self._may_take(lo, hi)

    @property
    def _mid_character(self) -> bool:
        return self._need > 0

    def _copy_bytes_to(self, twin: CodePointPrefix) -> None:
        twin._pending, twin._need, twin._least = self._pending, self._need, self._least

    def _step(self, code: int) -> bool:
        raise NotImplementedError

    def _may_take(self, lo: int, hi: int) -> bool:
        raise NotImplementedError

    def _may_complete(self) -> bool:
        """Whether some character that the bytes so far begin could be taken here (surrogate
        halves are no characters: ED A0-BF begins none)."""
        lo, hi = self.partial_range()  # type: ignore[misc]
        below, above = (lo, min(hi, SURROGATES[0] - 1)), (max(lo, SURROGATES[1] + 1), hi)
        return any(a <= b and self._may_take(a, b) for a, b in (below, above))
