"""Grammars in GBNF, the EBNF notation of llama.cpp and xgrammar (what vLLM's
`structured_outputs.grammar` takes), parsed into rules of expressions:

    root   ::= "SELECT " column (", " column)* " FROM " table
    column ::= [a-z_]+ | "*"
    table  ::= [a-z_]+   # a comment

A rule is `name ::= alternatives`, its body running on to the next `name ::=`. Terms:
"literals" and 'literals' (escapes \\n \\t \\r \\\\ \\" \\' \\xHH \\uHHHH \\UHHHHHHHH), character
classes ([a-z0-9], [^"\\\\], with the same escapes), `.` (any character), rule names, groups
( ... ), and the repeats * + ? {m} {m,} {m,n}. Lark's `name: ...` notation is not taken.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.char_set import CharSet

MAX_REPEAT = 256  # {m,n} copies its operand: keep grammars small
_ESCAPES = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "0": 0, "a": 7, "b": 8, "e": 27}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
ANY_CHARACTER = CharSet((), negated=True)


class GrammarError(ValueError):
    """A grammar this decoder cannot follow (the message says where)."""


@dataclass(frozen=True, slots=True)
class Chars:
    """One character of a set."""

    chars: CharSet


@dataclass(frozen=True, slots=True)
class Ref:
    name: str


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Repeat:
    item: Node
    low: int
    high: int | None  # None: no bound


Node = Chars | Ref | Seq | Alt | Repeat


def parse_grammar(text: str) -> dict[str, Node]:
    """The rules of a GBNF grammar by name, in the order written; GrammarError says what is
    wrong and where (line:column)."""
    return _Parser(text).rules()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def rules(self) -> dict[str, Node]:
        rules: dict[str, Node] = {}
        self._skip()
        if self.at == len(self.text):
            raise GrammarError("the grammar is empty")
        while self.at < len(self.text):
            where = self.at
            name = self._name()
            if name is None or not self._rule_starts_at(where):
                raise self._error("a rule (name ::= ...) expected", where)
            self._skip()
            self.at += 3  # "::="
            if name in rules:
                raise self._error(f"the rule {name!r} is defined twice", where)
            rules[name] = self._alternation()
            self._skip()
        return rules

    # -- expressions ------------------------------------------------------------------------

    def _alternation(self) -> Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def _sequence(self) -> Node:
        items: list[Node] = []
        while True:
            c = self._peek()
            if c in (None, "|", ")") or self._rule_starts_at(self.at):
                break
            items.append(self._repeated())
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def _repeated(self) -> Node:
        item = self._atom()
        while True:
            c = self._peek()
            if c == "*":
                low, high = 0, None
            elif c == "+":
                low, high = 1, None
            elif c == "?":
                low, high = 0, 1
            elif c == "{":
                low, high = self._braces()
                item = Repeat(item, low, high)
                continue
            else:
                return item
            self.at += 1
            item = Repeat(item, low, high)

    def _braces(self) -> tuple[int, int | None]:
        where = self.at
        close = self.text.find("}", self.at)
        body = self.text[self.at + 1 : close].replace(" ", "") if close > 0 else ""
        parts = body.split(",")
        if close < 0 or len(parts) > 2 or not parts[0].isdigit() or (
            len(parts) == 2 and parts[1] and not parts[1].isdigit()
        ):
            raise self._error("a repeat {m}, {m,} or {m,n} expected", where)
        self.at = close + 1
        low = int(parts[0])
        high = low if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if high is not None and high < low:
            raise self._error(f"{{{body}}}: the maximum is below the minimum", where)
        if max(low, high or 0) > MAX_REPEAT:
            raise self._error(f"{{{body}}}: repeats are at most {MAX_REPEAT}", where)
        return low, high

    def _atom(self) -> Node:
        c = self._peek()
        where = self.at
        if c == "(":
            self.at += 1
            inner = self._alternation()
            if self._peek() != ")":
                raise self._error("an unclosed group", where)
            self.at += 1
            return inner
        if c in ('"', "'"):
            return self._literal(c)
        if c == "[":
            return Chars(self._class())
        if c == ".":
            self.at += 1
            return Chars(ANY_CHARACTER)
        name = self._name()
        if name is None:
            raise self._error(f"unexpected {c!r}", where)
        return Ref(name)

    def _literal(self, quote: str) -> Node:
        where = self.at
        self.at += 1
        codes: list[int] = []
        while True:
            if self.at >= len(self.text) or self.text[self.at] == "\n":
                raise self._error("an unclosed string", where)
            c = self.text[self.at]
            if c == quote:
                self.at += 1
                break
            codes.append(self._char())
        items = tuple(Chars(CharSet(((code, code),))) for code in codes)
        return items[0] if len(items) == 1 else Seq(items)

    def _class(self) -> CharSet:
        where = self.at
        self.at += 1
        negated = self.text.startswith("^", self.at)
        if negated:
            self.at += 1
        ranges: list[tuple[int, int]] = []
        while True:
            if self.at >= len(self.text):
                raise self._error("an unclosed character class", where)
            if self.text[self.at] == "]":
                self.at += 1
                break
            lo = self._char()
            if self.text.startswith("-", self.at) and not self.text.startswith("-]", self.at):
                self.at += 1
                if self.at >= len(self.text):  # "[a-" ends the text
                    raise self._error("an unclosed character class", where)
                hi = self._char()
                if hi < lo:
                    raise self._error("a backwards range in a character class", where)
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        return CharSet(tuple(sorted(ranges)), negated)

    def _char(self) -> int:
        """One character of a literal or a class, escapes read."""
        c = self.text[self.at]
        if c != "\\":
            self.at += 1
            return ord(c)
        where = self.at
        e = self.text[self.at + 1 : self.at + 2]
        self.at += 2
        if e in _HEX_DIGITS:
            digits = self.text[self.at : self.at + _HEX_DIGITS[e]]
            if len(digits) != _HEX_DIGITS[e] or any(d not in "0123456789abcdefABCDEF"
                                                     for d in digits):  # fmt: skip
                raise self._error(f"\\{e} takes {_HEX_DIGITS[e]} hex digits", where)
            self.at += len(digits)
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self._error("a code point beyond U+10FFFF", where)
            return code
        if e in _ESCAPES:
            return _ESCAPES[e]
        if not e or e.isalnum():
            raise self._error(f"the escape \\{e} is not known", where)
        return ord(e)

    # -- tokens -----------------------------------------------------------------------------

    def _name(self) -> str | None:
        self._skip()
        start = self.at
        while self.at < len(self.text) and (self.text[self.at].isalnum()
                                            or self.text[self.at] in "_-"):  # fmt: skip
            self.at += 1
        return self.text[start : self.at] or None

    def _rule_starts_at(self, at: int) -> bool:
        """Whether a `name ::=` starts at `at` (after blanks), which ends the rule before it."""
        saved = self.at
        self.at = at
        try:
            if self._name() is None:
                return False
            self._skip()
            return self.text.startswith("::=", self.at)
        finally:
            self.at = saved

    def _peek(self) -> str | None:
        self._skip()
        return self.text[self.at] if self.at < len(self.text) else None

    def _skip(self) -> None:
        """Past blanks, newlines and # comments."""
        while self.at < len(self.text):
            c = self.text[self.at]
            if c == "#":
                end = self.text.find("\n", self.at)
                self.at = len(self.text) if end < 0 else end + 1
            elif c.isspace():
                self.at += 1
            else:
                return

    def _error(self, what: str, at: int) -> GrammarError:
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return GrammarError(f"grammar line {line}, column {column}: {what}")
