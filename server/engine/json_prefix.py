"""Whether text (as UTF-8 bytes, one at a time) is still the start of one JSON object (RFC 8259).

A pushdown automaton: the open containers on a stack, and what may come next. Bytes of 0x80 and
above are allowed inside strings only, as well-formed UTF-8 (a character's bytes may arrive in
separate tokens).
Runs of whitespace are capped, so a constrained model cannot pad forever; once the object
closes nothing more is allowed (the generation must end).
"""

from __future__ import annotations

from server.engine.code_point_prefix import CONTINUATION, second_byte_range

_WHITESPACE = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
MAX_WHITESPACE_RUN = 32

# what may come next
_TOP, _VALUE, _ARRAY_FIRST, _OBJECT_FIRST, _KEY, _COLON, _AFTER = range(7)
_STRING, _ESCAPE, _UNICODE, _LITERAL, _DONE = range(7, 12)
_MINUS, _ZERO, _INTEGER, _DOT, _FRACTION, _E, _E_SIGN, _EXPONENT = range(12, 20)
_NUMBER_ENDS = frozenset((_ZERO, _INTEGER, _FRACTION, _EXPONENT))


class JsonPrefix:
    """Feed bytes with `feed`; False means the text can no longer become a JSON object (the
    state is then undefined: `copy` before trying). `complete` once the object has closed."""

    __slots__ = ("_mode", "_stack", "_key", "_pending", "_spaces", "_utf8_left", "_utf8_next")

    def __init__(self) -> None:
        self._mode = _TOP
        self._stack = ""  # "{" and "[" of the open containers
        self._key = False  # the string being read is an object key
        self._pending: bytes | int = b""  # a literal's rest, or hex digits still due
        self._spaces = 0
        self._utf8_left = 0  # continuation bytes the string's current character still needs
        # the range of the next one: narrower after some lead bytes (no overlong forms,
        # surrogate halves or code points past U+10FFFF: a token's bytes may be any)
        self._utf8_next = CONTINUATION

    @property
    def complete(self) -> bool:
        return self._mode == _DONE

    @property
    def final(self) -> bool:
        """Nothing can follow (an object that has closed)."""
        return self.complete

    def copy(self) -> JsonPrefix:
        twin = JsonPrefix.__new__(JsonPrefix)
        twin._mode, twin._stack, twin._key = self._mode, self._stack, self._key
        twin._pending, twin._spaces, twin._utf8_left = self._pending, self._spaces, self._utf8_left
        twin._utf8_next = self._utf8_next
        return twin

    def value_state(self) -> str:
        """"inside" a scalar value (string, number, literal), "after" a value in a container,
        or "other" (used by `schema_prefix`, which reads one scalar at a time with this)."""
        if self._mode in (_STRING, _ESCAPE, _UNICODE, _LITERAL) or self._mode >= _MINUS:
            return "inside"
        return "after" if self._mode == _AFTER else "other"

    def number_may_end(self) -> bool:
        return self._mode in _NUMBER_ENDS

    def in_plain_string(self) -> bool:
        """Inside a string, where a quote would close it (not in an escape or a character)."""
        return self._mode == _STRING and not self._utf8_left

    def feed_all(self, data: bytes) -> bool:
        return all(self.feed(b) for b in data)

    def feed(self, b: int) -> bool:
        mode = self._mode
        if mode == _STRING:
            if self._utf8_left:
                self._utf8_left -= 1
                low, high = self._utf8_next
                self._utf8_next = CONTINUATION
                return low <= b <= high
            if b >= 0x80:
                self._utf8_left = 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF else 3
                self._utf8_next = second_byte_range(b)
                return 0xC2 <= b <= 0xF4
            if b == 0x22:  # "
                if self._key:
                    self._mode = _COLON
                else:
                    self._value_done()
            elif b == 0x5C:  # backslash
                self._mode = _ESCAPE
            return b >= 0x20
        if b in _WHITESPACE and mode < _STRING:
            self._spaces += 1
            return self._spaces <= MAX_WHITESPACE_RUN
        self._spaces = 0
        if mode >= _MINUS:
            return self._number(b)
        if mode == _TOP:
            return self._open_object(b)
        if mode in (_VALUE, _ARRAY_FIRST):
            if mode == _ARRAY_FIRST and b == 0x5D:  # ]
                return self._close(b)
            return self._value_start(b)
        if mode in (_OBJECT_FIRST, _KEY):
            if b == 0x22:
                self._mode, self._key = _STRING, True
                return True
            return mode == _OBJECT_FIRST and self._close(b)
        if mode == _COLON:
            if b != 0x3A:  # :
                return False
            self._mode = _VALUE
            return True
        if mode == _AFTER:
            if b == 0x2C:  # ,
                self._mode = _KEY if self._stack[-1] == "{" else _VALUE
                return True
            return self._close(b)
        if mode == _ESCAPE:
            if b == 0x75:  # u
                self._mode, self._pending = _UNICODE, 4
                return True
            self._mode = _STRING
            return b in _ESCAPES
        if mode == _UNICODE:
            self._pending = int(self._pending) - 1
            if self._pending == 0:
                self._mode = _STRING
            return b in _HEX
        if mode == _LITERAL:
            rest = bytes(self._pending)
            if not rest or rest[0] != b:
                return False
            self._pending = rest[1:]
            if not self._pending:
                self._value_done()
            return True
        return False  # _DONE: the object has closed

    # -- helpers --------------------------------------------------------------------------------

    def _open_object(self, b: int) -> bool:
        if b != 0x7B:  # {
            return False
        self._stack += "{"
        self._mode = _OBJECT_FIRST
        return True

    def _value_start(self, b: int) -> bool:
        if b == 0x7B:
            return self._open_object(b)
        if b == 0x5B:  # [
            self._stack += "["
            self._mode = _ARRAY_FIRST
        elif b == 0x22:
            self._mode, self._key = _STRING, False
        elif b == 0x2D:  # -
            self._mode = _MINUS
        elif b == 0x30:  # 0
            self._mode = _ZERO
        elif b in _DIGITS:
            self._mode = _INTEGER
        elif b in _LITERALS:
            self._mode, self._pending = _LITERAL, _LITERALS[b]
        else:
            return False
        return True

    def _close(self, b: int) -> bool:
        want = {0x7D: "{", 0x5D: "["}.get(b)  # } ]
        if want is None or not self._stack or self._stack[-1] != want:
            return False
        self._stack = self._stack[:-1]
        self._value_done()
        return True

    def _value_done(self) -> None:
        self._mode = _AFTER if self._stack else _DONE

    def _number(self, b: int) -> bool:
        mode = self._mode
        digit = b in _DIGITS
        if mode == _MINUS:
            self._mode = _ZERO if b == 0x30 else _INTEGER
            return digit
        if mode in (_INTEGER, _FRACTION, _EXPONENT) and digit:
            return True
        if mode in (_ZERO, _INTEGER) and b == 0x2E:  # .
            self._mode = _DOT
            return True
        if mode in (_ZERO, _INTEGER, _FRACTION) and b in (0x65, 0x45):  # e E
            self._mode = _E
            return True
        if mode in (_DOT, _E_SIGN):
            self._mode = _FRACTION if mode == _DOT else _EXPONENT
            return digit
        if mode == _E:
            if b in (0x2B, 0x2D):  # + -
                self._mode = _E_SIGN
                return True
            self._mode = _EXPONENT
            return digit
        if mode in _NUMBER_ENDS:  # the number has ended: the byte belongs to what follows
            self._value_done()
            return self.feed(b)
        return False
