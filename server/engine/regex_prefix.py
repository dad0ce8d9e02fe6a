"""Whether text (UTF-8 bytes, one at a time) is still the start of a match of a regular
expression (vLLM's `guided_regex`; the whole text must match, as `re.fullmatch`): the same
interface as `JsonPrefix`.

The pattern is compiled once into a Thompson NFA over characters and simulated on state sets.
The syntax: literals and escapes (`\\d \\w \\s` as Unicode classes, their negations, `\\n \\t`, escaped
metacharacters), `.` (any character but a newline), classes (`[a-z_]`, `[^"\\\\]`), groups
(`(...)`, `(?:...)`), `|`, and the greedy or lazy quantifiers `* + ? {m} {m,} {m,n}`; `^` at
the start and `$` at the end are allowed (the match is whole anyway). Anything else
(backreferences, lookaround, flags) raises `RegexError`.
"""

from __future__ import annotations

import collections
import functools

from server.engine.char_nfa import CharNfaBuilder
from server.engine.char_set import IN_CLASS, CharSet
from server.engine.code_point_prefix import CodePointPrefix
from server.engine.collection_pause import collection_paused

_MAX_REPEAT = 256  # {m,n} copies its operand: keep patterns small
# nested repeats multiply (`((a{256}){256}){256}` is 16M copies: it took the server past 19 GB
# before answering); ~9 us a state here, so the cap bounds a compile to about half a second
MAX_STATES = 50_000


class RegexError(ValueError):
    """A pattern this decoder cannot follow (the message says where)."""


_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_DOT = CharSet(((10, 10),), negated=True)


@functools.lru_cache(maxsize=16)  # one near MAX_STATES holds ~18 MB
def compiled_regex(pattern: str) -> Regex:
    """The automaton of `pattern`, compiled once per pattern: a request's pattern is checked
    where it arrives and followed in the engine, and requests often repeat one (a compile near
    MAX_STATES takes about half a second). Its state is only a memo, so one serves all."""
    return Regex(pattern)


class Regex:
    """A compiled pattern: `start()` gives the prefix automaton of one generation."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._distance: dict[frozenset[int], int | None] = {}  # chars_to_accept's answers
        with collection_paused():
            builder = CharNfaBuilder(MAX_STATES, lambda: _too_large(pattern))
            start, accept = _Parser(pattern, builder).parse()
            self.start_state, self.accept_state = start, accept
            self._nfa = builder.packed()
            self._live = self._states_that_reach_accept()
        if self.start_state not in self._live:  # e.g. `[^\x00-\U0010FFFF]`: "" would "match"
            raise RegexError(f"the pattern {pattern!r} matches no text")

    def start(self) -> RegexPrefix:
        return RegexPrefix(self, self._closure({self.start_state}))

    # -- simulation ---------------------------------------------------------------------------

    def step(self, states: frozenset[int], code: int) -> frozenset[int]:
        charsets, edges = self._nfa.charsets, self._nfa.edges
        moved = {t for s in states for c, t in edges[s] if code in charsets[c]}
        return self._closure(moved) & self._live

    def may_take(self, states: frozenset[int], lo: int, hi: int) -> bool:
        charsets, edges = self._nfa.charsets, self._nfa.edges
        return any(charsets[c].may_hold(lo, hi) for s in states for c, _ in edges[s])

    def can_continue(self, states: frozenset[int]) -> bool:
        return any(self._nfa.edges[s] for s in states)

    def may_take_within(self, states: frozenset[int], lo: int, hi: int, budget: int) -> bool:
        """Whether some character in [lo, hi] leads to a state from which at most `budget`
        more characters reach a match."""
        for s in states:
            for c, t in self._nfa.edges[s]:
                if self._nfa.charsets[c].may_hold(lo, hi):
                    need = self.chars_to_accept(self._closure({t}) & self._live)
                    if need is not None and need <= budget:
                        return True
        return False

    def chars_to_accept(self, states: frozenset[int]) -> int | None:
        """The fewest characters that lead from `states` to a match (None: none does)."""
        if states not in self._distance:
            self._distance[states] = self._fewest_chars(states)
        return self._distance[states]

    def _fewest_chars(self, states: frozenset[int]) -> int | None:
        best = dict.fromkeys(states, 0)
        todo = collections.deque(states)
        while todo:  # breadth first: empty moves cost 0, characters 1
            s = todo.popleft()
            if s == self.accept_state:
                return best[s]
            for t in self._nfa.empty[s]:
                if best.get(t, best[s] + 1) > best[s]:
                    best[t] = best[s]
                    todo.appendleft(t)
            for _, t in self._nfa.edges[s]:
                if t not in best:
                    best[t] = best[s] + 1
                    todo.append(t)
        return None

    def _closure(self, states: set[int]) -> frozenset[int]:
        empty, seen, todo = self._nfa.empty, set(states), list(states)
        while todo:
            for t in empty[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    def _states_that_reach_accept(self) -> frozenset[int]:
        back: dict[int, list[int]] = {}
        for s, edges in enumerate(self._nfa.edges):
            for _, t in edges:
                back.setdefault(t, []).append(s)
            for t in self._nfa.empty[s]:
                back.setdefault(t, []).append(s)
        live, todo = {self.accept_state}, [self.accept_state]
        while todo:
            for s in back.get(todo.pop(), []):
                if s not in live:
                    live.add(s)
                    todo.append(s)
        return frozenset(live)


class RegexPrefix(CodePointPrefix):
    """`complete` once the text matches; `final` once nothing more could."""

    __slots__ = ("_regex", "_states")

    def __init__(self, regex: Regex, states: frozenset[int]) -> None:
        super().__init__()
        self._regex = regex
        self._states = states

    @property
    def complete(self) -> bool:
        return not self._mid_character and self._regex.accept_state in self._states

    @property
    def final(self) -> bool:
        return self.complete and not self._regex.can_continue(self._states)

    def copy(self) -> RegexPrefix:
        twin = RegexPrefix(self._regex, self._states)
        self._copy_bytes_to(twin)
        return twin

    def chars_to_complete(self) -> int | None:
        """The fewest more characters that complete a match (None: none can)."""
        return self._regex.chars_to_accept(self._states)

    def could_take_within(self, lo: int, hi: int, budget: int) -> bool:
        """Whether some character in [lo, hi] can come next and leave a match at most
        `budget` characters further (between characters)."""
        return self._regex.may_take_within(self._states, lo, hi, budget)

    def _step(self, code: int) -> bool:
        self._states = self._regex.step(self._states, code)
        return bool(self._states)

    def _may_take(self, lo: int, hi: int) -> bool:
        return self._regex.may_take(self._states, lo, hi)


class _Parser:
    """Recursive descent over the pattern, building NFA fragments (start, accept) in `nfa`."""

    def __init__(self, pattern: str, nfa: CharNfaBuilder) -> None:
        self.text, self.at, self.nfa = pattern, 0, nfa

    def parse(self) -> tuple[int, int]:
        if self._peek() == "^":
            self.at += 1
        fragment = self._alternation()
        if self.at != len(self.text):
            raise RegexError(f"unexpected {self.text[self.at]!r} at {self.at} in {self.text!r}")
        return fragment

    def _fail(self, what: str) -> RegexError:
        return RegexError(f"{what} at {self.at} in {self.text!r} is not supported")

    def _peek(self) -> str | None:
        return self.text[self.at] if self.at < len(self.text) else None

    def _alternation(self) -> tuple[int, int]:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            branches.append(self._sequence())
        if len(branches) == 1:
            return branches[0]
        enter, leave = self.nfa.new_state(), self.nfa.new_state()
        for s, a in branches:
            self.nfa.empty(enter, s)
            self.nfa.empty(a, leave)
        return enter, leave

    def _sequence(self) -> tuple[int, int]:
        enter = leave = self.nfa.new_state()
        while self._peek() not in (None, "|", ")"):
            if self._peek() == "$" and self.at == len(self.text) - 1:
                self.at += 1
                break
            s, a = self._repeated()
            self.nfa.empty(leave, s)
            leave = a
        return enter, leave

    def _repeated(self) -> tuple[int, int]:
        atom_at = self.at
        first = self._atom()
        low, high = self._quantifier()
        if (low, high) == (1, 1):
            return first
        if self._peek() == "?":  # lazy: the same language
            self.at += 1
        end = self.at
        count = max(low, 1) if high is None else high
        if count > _MAX_REPEAT:
            raise RegexError(f"a repeat of {count} in {self.text!r} is more than {_MAX_REPEAT}")
        if count == 0:  # {0}: the empty string
            empty = self.nfa.new_state()
            return empty, empty
        copies = [first]
        for _ in range(count - 1):  # each copy compiled again from the operand's text
            self.at = atom_at
            copies.append(self._atom())
        self.at = end
        enter, out = self.nfa.new_state(), self.nfa.new_state()
        before = enter
        for i, (s, a) in enumerate(copies):
            if i >= low:  # enough copies already: may stop here
                self.nfa.empty(before, out)
            self.nfa.empty(before, s)
            before = a
        self.nfa.empty(before, out)
        if high is None:  # unbounded: the last copy repeats
            self.nfa.empty(copies[-1][1], copies[-1][0])
        return enter, out

    def _quantifier(self) -> tuple[int, int | None]:
        c = self._peek()
        if c == "*":
            self.at += 1
            return 0, None
        if c == "+":
            self.at += 1
            return 1, None
        if c == "?":
            self.at += 1
            return 0, 1
        if c == "{":
            close = self.text.find("}", self.at)
            body = self.text[self.at + 1 : close] if close > 0 else ""
            parts = body.split(",")
            if close < 0 or len(parts) > 2 or not parts[0].isdigit() or (
                len(parts) == 2 and parts[1] and not parts[1].isdigit()
            ):
                raise self._fail("this repeat")
            self.at = close + 1
            low = int(parts[0])
            high = low if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
            if high is not None and high < low:
                raise RegexError(f"{{{body}}} in {self.text!r}: the maximum is below the minimum")
            return low, high
        return 1, 1

    def _atom(self) -> tuple[int, int]:
        c = self._peek()
        if c == "(":
            self.at += 1
            if self.text.startswith("?:", self.at):
                self.at += 2
            elif self._peek() == "?":
                raise self._fail("a group extension (lookaround, flags, names)")
            fragment = self._alternation()
            if self._peek() != ")":
                raise RegexError(f"an unclosed group in {self.text!r}")
            self.at += 1
            return fragment
        if c == "[":
            return self._single(self._class())
        if c == ".":
            self.at += 1
            return self._single(_DOT)
        if c == "\\":
            return self._single(self._escape())
        if c in ("*", "+", "?", "{", ")", "|", None) or c in "^$":
            raise self._fail(f"{c!r} here")
        self.at += 1
        return self._single(CharSet(((ord(c), ord(c)),)))

    def _single(self, chars: CharSet) -> tuple[int, int]:
        s, a = self.nfa.new_state(), self.nfa.new_state()
        self.nfa.edge(s, chars, a)
        return s, a

    def _escape(self) -> CharSet:
        self.at += 1
        c = self._peek()
        if c is None:
            raise RegexError(f"a trailing backslash in {self.text!r}")
        self.at += 1
        if c.lower() in IN_CLASS:
            return CharSet((), negated=c.isupper(), classes=c.lower())
        if c in _ESCAPED:
            code = ord(_ESCAPED[c])
        elif c.isalnum():
            raise self._fail(f"the escape \\{c}")
        else:
            code = ord(c)
        return CharSet(((code, code),))

    def _class(self) -> CharSet:
        self.at += 1
        negated = self._peek() == "^"
        if negated:
            self.at += 1
        ranges: list[tuple[int, int]] = []
        classes = ""
        first = True
        while True:
            c = self._peek()
            if c is None:
                raise RegexError(f"an unclosed class in {self.text!r}")
            if c == "]" and not first:
                self.at += 1
                break
            first = False
            if c == "\\":
                part = self._escape()
                if part.negated:
                    raise self._fail("a negated class escape inside a class")
                if part.classes:
                    classes += part.classes
                    continue
                lo = part.ranges[0][0]
            else:
                lo = ord(c)
                self.at += 1
            if self._peek() == "-" and self.text[self.at + 1 : self.at + 2] not in ("]", ""):
                self.at += 1
                hi_char = self._peek()
                if hi_char == "\\":
                    end = self._escape()
                    if end.classes or end.negated:
                        raise RegexError(f"a range that ends in a class in {self.text!r}")
                    hi = end.ranges[0][1]
                else:
                    hi = ord(hi_char)  # type: ignore[arg-type]
                    self.at += 1
                if hi < lo:
                    raise RegexError(f"a backwards range in {self.text!r}")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        return CharSet(tuple(sorted(ranges)), negated, classes)


def _too_large(pattern: str) -> RegexError:
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    return RegexError(
        f"the pattern {shown!r} is too large: it compiles to more than {MAX_STATES} "
        "states (a repeat copies its operand, so nested repeats multiply)"
    )
