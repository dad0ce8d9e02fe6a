"""JSON Schema's `minLength`, `maxLength` and `pattern` while a JSON string is written byte by
byte: its content is read as characters (UTF-8 and escapes alike) and counted, and a pattern is
followed by the regular-expression automaton, so that a byte that could only lead to a string
the schema refuses is refused at once (with maxLength and a pattern together, a character is
refused when the pattern could not be completed within the length left). Whether the bytes are
a JSON string at all is the caller's (`JsonPrefix`) to say. Not foreseen: a minLength that a
pattern's match can only reach through characters it has already ruled out (say `^ab$` with
minLength 3), which no string satisfies."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from server.engine.regex_prefix import Regex, RegexError, RegexPrefix, compiled_regex

_SIMPLE_ESCAPES = {ord('"'): 0x22, ord("\\"): 0x5C, ord("/"): 0x2F, ord("b"): 0x08,
                   ord("f"): 0x0C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09}  # fmt: skip
_SURROGATES = (0xD800, 0xDFFF)
_ANY = (0, 0x10FFFF)
_PLAIN, _ESCAPE, _HEX = range(3)


@dataclass(frozen=True, slots=True)
class StringRules:
    """A string schema's assertions: lengths in characters, and a pattern (ECMA-262's search
    semantics: it matches anywhere in the string unless anchored by ^ or $)."""

    min_length: int = 0
    max_length: int | None = None
    pattern: str | None = None

    def start(self) -> StringReader:
        regex = None if self.pattern is None else search_regex(self.pattern).start()
        return StringReader(self, regex)


@functools.lru_cache(maxsize=256)
def search_regex(pattern: str) -> Regex:
    """`pattern` as a whole-text match: a search unless anchored at an end, alternative by
    alternative (compiled once per pattern). Raises RegexError, naming the pattern, for what
    the automaton cannot follow."""
    # each top-level alternative is anchored or not on its own: `^a|b$` is (^a)|(b$)
    alternatives = _alternatives(pattern)
    try:
        compiled_regex(pattern)  # its errors name the pattern as written
    except RegexError:
        if len(alternatives) == 1:
            raise
        for alternative in alternatives:  # an anchor between them (`a$|^b`) is no error here
            Regex(alternative)
    return Regex("|".join(f"(?:{_searched(a)})" for a in alternatives))


def _searched(body: str) -> str:
    """One alternative as a whole-text match: any text before it unless it starts with `^`,
    after it unless it ends with a `$` that is no escaped character (`\\\\$` is)."""
    head = "" if body.startswith("^") else "(?:.|\\n)*"
    body = body.removeprefix("^")
    backslashes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
    anchored_end = body.endswith("$") and backslashes % 2 == 0
    tail = "" if anchored_end else "(?:.|\\n)*"
    body = body.removesuffix("$") if anchored_end else body
    return f"{head}(?:{body}){tail}"


def _alternatives(pattern: str) -> list[str]:
    """The pattern split at its top-level `|` (outside groups, classes and escapes)."""
    parts, start, depth, i = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1  # the escaped character is skipped
        elif c == "[":  # on to the class's closing "]" (one first, after any "^", is a literal)
            i += 2 if pattern[i + 1 : i + 2] == "^" else 1
            i += 1 if pattern[i : i + 1] == "]" else 0
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    return [*parts, pattern[start:]]


class StringReader:
    """The content of one string (the bytes after its opening quote), as it comes."""

    __slots__ = ("_rules", "_regex", "_count", "_mode", "_hex", "_utf8_left")

    def __init__(self, rules: StringRules, regex: RegexPrefix | None) -> None:
        self._rules = rules
        self._regex = regex
        self._count = 0  # characters begun
        self._mode = _PLAIN
        self._hex = ""  # the digits of a \\u escape so far
        self._utf8_left = 0  # continuation bytes of the character being read

    def copy(self) -> StringReader:
        twin = StringReader(self._rules, None if self._regex is None else self._regex.copy())
        twin._count, twin._mode, twin._hex = self._count, self._mode, self._hex
        twin._utf8_left = self._utf8_left
        return twin

    def may_close(self) -> bool:
        """Whether the closing quote may come now."""
        return (
            self._mode == _PLAIN and not self._utf8_left
            and self._count >= self._rules.min_length
            and (self._regex is None or self._regex.complete)
        )  # fmt: skip

    def feed(self, b: int) -> bool:
        """One content byte (not the closing quote); False if no allowed string goes on so."""
        if self._mode == _ESCAPE:
            return self._escaped(b)
        if self._mode == _HEX:
            return self._hex_digit(b)
        if self._utf8_left:
            self._utf8_left -= 1
            return self._regex is None or (self._regex.feed(b) and self._room_left())
        if not self._begin_character():
            return False
        if b == 0x5C:  # an escape: some character must be able to come
            self._mode = _ESCAPE
            return self._regex is None or self._fits(*_ANY)
        if b >= 0xC0:
            self._utf8_left = 1 if b <= 0xDF else 2 if b <= 0xEF else 3
        return self._regex is None or (self._regex.feed(b) and self._room_left())

    def _budget(self) -> int | None:
        """How many characters may follow the current one (None: no maxLength)."""
        limit = self._rules.max_length
        return None if limit is None else limit - self._count

    def _fits(self, lo: int, hi: int) -> bool:
        """Whether the character begun (some code point in [lo, hi]) can leave the pattern
        completable within maxLength."""
        assert self._regex is not None
        budget = self._budget()
        if budget is None:
            return self._regex.could_take(lo, hi)
        return self._regex.could_take_within(lo, hi, budget)

    def _room_left(self) -> bool:
        """Whether the pattern can still be completed within maxLength: exactly once a
        character is whole, and for some character the bytes so far can become while not."""
        assert self._regex is not None
        budget = self._budget()
        if budget is None:
            return True
        partial = self._regex.partial_range()
        if partial is not None:
            return self._regex.could_take_within(*partial, budget)
        need = self._regex.chars_to_complete()
        return need is not None and need <= budget

    def _begin_character(self) -> bool:
        limit = self._rules.max_length
        if limit is not None and self._count >= limit:
            return False
        self._count += 1
        return True

    def _escaped(self, b: int) -> bool:
        if b == ord("u"):
            self._mode, self._hex = _HEX, ""
            return True
        self._mode = _PLAIN
        code = _SIMPLE_ESCAPES.get(b)
        return code is not None and (
            self._regex is None or (self._regex.take(code) and self._room_left())
        )

    def _hex_digit(self, b: int) -> bool:
        digit = chr(b)
        if digit not in "0123456789abcdefABCDEF":
            return False
        self._hex += digit
        if self._regex is None:
            if len(self._hex) == 4:
                self._mode = _PLAIN
            return True
        # under a pattern, a \\u escape is a whole character: surrogate halves are refused
        lo = int(self._hex.ljust(4, "0"), 16)
        hi = int(self._hex.ljust(4, "f"), 16)
        if len(self._hex) < 4:
            return any(
                a <= b_ and self._fits(a, b_)
                for a, b_ in ((lo, min(hi, _SURROGATES[0] - 1)), (max(lo, _SURROGATES[1] + 1), hi))
            )
        self._mode = _PLAIN
        return (
            not _SURROGATES[0] <= lo <= _SURROGATES[1]
            and self._regex.take(lo) and self._room_left()
        )  # fmt: skip
