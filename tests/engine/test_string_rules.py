"""String assertions of JSON Schema (minLength, maxLength, pattern) while a JSON string is
written: against Python's `len` and `re.search` on random strings, written as JSON writes them
(escapes and UTF-8 alike)."""

from __future__ import annotations

import json
import random
import re

import pytest

from server.engine.string_rules import StringRules

CASES = [
    (0, None, r"\d{2}"), (2, 5, r"^[A-Z][a-z]+$"), (0, 3, None), (3, None, None),
    (0, 6, r"^a+b$"), (1, 4, r"é|ü"), (0, None, r'^"?x\n'), (0, 8, r"(ab|ba)+$"),
    # anchors belong to their top-level alternative, and "\\$" ends in an anchor
    (0, None, r"^a|b$"), (0, 6, r"^x|[ab]\d$|é"), (0, None, r"a\\$"), (0, None, r"a\$|[|]"),
]  # fmt: skip
ALPHABET = 'abxAZ0123456789"\\\né ü'


def _ecma(pattern: str) -> str:
    """`pattern` for Python's re with ECMA-262's `$` (the very end: Python's also matches before
    a final newline), as JSON Schema reads it (no `$` inside a class in these cases)."""
    return re.sub(r"(\\.)|\$", lambda m: m.group(1) or r"\Z", pattern)


def _follows(rules: StringRules, content: bytes) -> tuple[bool, bool]:
    """(every byte taken, the closing quote allowed after them)."""
    reader = rules.start()
    taken = all(reader.feed(b) for b in content)
    return taken, taken and reader.may_close()


@pytest.mark.parametrize(("low", "high", "pattern"), CASES)
def test_a_string_closes_exactly_when_its_lengths_and_pattern_hold(low, high, pattern):
    rules, rng = StringRules(low, high, pattern), random.Random(str(pattern))
    for _ in range(2000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
        wanted = low <= len(text) <= (high if high is not None else 99) and (
            pattern is None or re.search(_ecma(pattern), text) is not None
        )
        for ascii_only in (True, False):  # é as \u00e9 or as its UTF-8 bytes
            content = json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode()
            _, closes = _follows(rules, content)
            assert closes == wanted, (text, ascii_only)


def test_a_byte_is_refused_as_soon_as_no_allowed_string_goes_on_from_it():
    capital = StringRules(0, 5, r"^[A-Z][a-z]+$").start()
    assert not capital.copy().feed(ord("a")) and capital.feed(ord("F"))
    assert all(capital.feed(b) for b in b"elix") and not capital.feed(ord("x"))  # 5 already
    assert capital.may_close()
    # within maxLength 3, "aa" leaves room only for the b that ends the pattern
    short = StringRules(0, 3, r"^a+b$").start()
    assert short.feed(ord("a")) and short.feed(ord("a")) and not short.copy().feed(ord("a"))
    # a character's lead byte is refused when no character it begins fits
    greek = StringRules(0, None, r"^[α-ω]+$").start()
    assert not greek.copy().feed("é".encode()[0]) and greek.feed("α".encode()[0])
    # an escape that can only be a surrogate half is refused under a pattern
    any_char = StringRules(0, None, r".").start()
    assert any_char.feed(ord("\\")) and any_char.feed(ord("u")) and any_char.feed(ord("D"))
    assert not any_char.feed(ord("C"))  # \uDC..: a low surrogate, whatever follows
