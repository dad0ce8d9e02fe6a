"""guided_regex: the regular-expression automaton against Python's `re`, and the engine's
generations that must match."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from server.engine import LLMEngine, SamplingParams
from server.engine.regex_prefix import Regex, RegexError

PATTERNS = [
    r"\d{3}-\d{4}", r"(yes|no)!?", r"[A-Z][a-z]+( [A-Z][a-z]+)*", r"a*b+c?", r"(ab|a)*b",
    r"x{2,4}y{0,}", r'"[^"\\]*"', r"\w+@\w+\.(com|org)", r"^(a|b)*abb$", r".{2}z",
    r"[\d\s]+", r"(a{0}|b)c", r"(?:é|ü)+\.", r"[-a-c]{1,3}?x", r"\W\S\D",
]  # fmt: skip
ALPHABET = 'ab-0123456789xyzABC "\\@.comrgyesnoz!éü\n'


@pytest.mark.parametrize("pattern", PATTERNS)
def test_complete_exactly_when_re_fullmatches_and_matches_are_followed_throughout(pattern):
    regex, rng = Regex(pattern), random.Random(pattern)
    for _ in range(1500):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
        state = regex.start()
        alive = state.feed_all(text.encode())
        assert (alive and state.complete) == bool(re.fullmatch(pattern, text)), text


def test_bytes_of_one_character_may_arrive_apart_and_bad_utf8_is_refused():
    state = Regex(r"é+").start()
    data = "éé".encode()
    assert all(state.feed(b) for b in data[:3]) and not state.complete
    assert state.feed(data[3]) and state.complete and not state.final
    assert not Regex("a").start().feed(0xFF)
    # a surrogate half, overlong forms and past U+10FFFF are no characters, even for `.`
    for bad in (b"\xed\xa0", b"\xe0\x80", b"\xf0\x8f", b"\xf4\x90"):
        state = Regex(".+").start()
        assert state.feed(bad[0]) and not state.feed(bad[1]), bad
    assert Regex(".+").start().feed_all("\ud7ff\ue000\U0010ffff".encode())
    done = Regex("ab").start()
    assert done.feed_all(b"ab") and done.final


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(a", "unclosed group"), ("a{3,2}", "below the minimum"), (r"\1", r"escape \\1"),
     ("(?=a)", "lookaround"), ("[a", "unclosed class"), ("a**", "'\\*' here"),
     ("a{999}", "more than"), (r"[a-\d]", "ends in a class"),
     # a class of no character a text can carry: "" was taken as its match
     ("[^\x00-\U0010ffff]", "matches no text"), ("a[\ud800-\udfff]b", "matches no text")],
)  # fmt: skip
def test_unsupported_patterns_are_refused_with_the_reason(pattern: str, message: str):
    with pytest.raises(RegexError, match=message):
        Regex(pattern)


def test_the_engine_writes_matches(tiny_llama_path: Path):
    engine = LLMEngine.from_pretrained(str(tiny_llama_path))
    pattern = r"(cat|dog)s? \d{1,3}"
    prompts = [engine.tokenizer.encode(p) for p in ("Count:", "A parrot", "x y z")]
    for sampling in (SamplingParams(max_tokens=12, temperature=0, regex=pattern),
                     SamplingParams(max_tokens=12, temperature=1.0, seed=3, regex=pattern)):  # fmt: skip
        for out in engine.generate(prompts, sampling):
            if out.finish_reason == "stop":
                assert re.fullmatch(pattern, out.text), out.text
            else:  # cut by max_tokens: its bytes are still the start of a match
                data = b"".join(engine.tokenizer.token_bytes(t) for t in out.token_ids)
                assert Regex(pattern).start().feed_all(data), out.text
    with pytest.raises(ValueError, match="one of"):
        SamplingParams(regex="a", choices=["a"])


@pytest.mark.parametrize(
    "pattern", ["((a{256}){256}){256}", "|".join(f"w{i}x" for i in range(20_000))]
)
def test_a_pattern_that_compiles_to_too_many_states_is_refused_quickly(pattern: str):
    # the nested repeats ran the server past 19 GB before this was bounded
    start = time.perf_counter()
    with pytest.raises(RegexError, match="too large"):
        Regex(pattern)
    assert time.perf_counter() - start < 5


def test_a_pattern_is_compiled_once_and_shared_by_its_generations() -> None:
    from server.engine.regex_prefix import compiled_regex

    pattern = "(ab|cd){2,40}[0-9]+"
    regex = compiled_regex(pattern)
    assert compiled_regex(pattern) is regex
    one, two = regex.start(), regex.start()  # each generation has its own position
    assert one.feed_all(b"abcd1") and one.complete
    assert two.feed_all(b"ab") and not two.complete
    assert not regex.start().feed_all(b"1")
