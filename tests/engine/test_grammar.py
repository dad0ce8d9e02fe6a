"""guided_grammar: the GBNF parser's errors, the pushdown automaton against Python's `re` (on
grammars with a regular language) and against exact checks of recursive ones, and the engine's
generations that must be sentences."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from server.engine import LLMEngine, SamplingParams
from server.engine.grammar import Grammar, GrammarError

# (grammar, a regular expression of the same language)
REGULAR = [
    ('root ::= [0-9]{3} "-" [0-9]{4}', r"[0-9]{3}-[0-9]{4}"),
    ('root ::= ("yes" | "no") "!"?', r"(yes|no)!?"),
    ("root ::= word (' ' word)*\nword ::= [A-Z] [a-z]+", r"[A-Z][a-z]+( [A-Z][a-z]+)*"),
    ('root ::= "a"* "b"+ "c"?', r"a*b+c?"),
    ('root ::= ("ab" | "a")* "b"', r"(ab|a)*b"),
    ('root ::= "x"{2,4} "y"{0,}  # a comment', r"x{2,4}y*"),
    ('root ::= "\\"" [^"\\\\]* "\\""', r'"[^"\\]*"'),
    ('root ::= . . "z"', r"[\s\S]{2}z"),
    ('root ::= ("\\u00e9" | "\\xfc")+ "."', r"(é|ü)+\."),
    ('root ::= item | item "," root\nitem ::= [ab]+', r"[ab]+(,[ab]+)*"),
    ('root ::= opt "x" opt\nopt ::= "y"?', r"y?xy?"),
    ('root ::=\n  "a"\n  | "b" tail\ntail ::= [-a-c]{1,3}', r"a|b[-a-c]{1,3}"),
]  # fmt: skip
ALPHABET = 'ab-0123456789xyzABC "\\,.!éüyesno\n'


@pytest.mark.parametrize(("grammar", "pattern"), REGULAR)
def test_complete_exactly_when_re_fullmatches(grammar: str, pattern: str):
    compiled, rng = Grammar(grammar), random.Random(pattern)
    for _ in range(1500):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
        state = compiled.start()
        alive = state.feed_all(text.encode())
        assert (alive and state.complete) == bool(re.fullmatch(pattern, text)), text


def _depths_ok(text: str) -> tuple[bool, bool]:
    """(every prefix can still be closed, the text is balanced) for `(`, `)` and `x`."""
    depth = 0
    for c in text:
        depth += {"(": 1, ")": -1, "x": 0}.get(c, -99)
        if depth < 0:
            return False, False
    return True, depth == 0


def test_a_recursive_grammar_takes_exactly_the_balanced_texts_and_their_prefixes():
    compiled, rng = Grammar('root ::= item*\nitem ::= "(" item* ")" | "x"'), random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice("((()x)") for _ in range(rng.randint(0, 12)))
        state = compiled.start()
        for k, c in enumerate(text):
            viable, _ = _depths_ok(text[: k + 1])
            assert state.feed(ord(c)) == viable, text[: k + 1]
            if not viable:
                break
        else:
            assert state.complete == _depths_ok(text)[1], text


ARITHMETIC = """
root ::= expr
expr ::= term ([-+*] term)*
term ::= [0-9]+ | "(" expr ")" | "-" term
"""


def _sentence(rng: random.Random, depth: int = 0) -> str:
    terms = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.3 and depth < 4:
            terms.append("(" + _sentence(rng, depth + 1) + ")")
        elif kind < 0.4 and depth < 4:
            terms.append("-" + str(rng.randint(0, 99)))
        else:
            terms.append(str(rng.randint(0, 999)))
    return "".join(t + rng.choice("+-*") for t in terms[:-1]) + terms[-1]


def test_sentences_are_followed_to_the_end_and_nothing_else_completes_them():
    compiled, rng = Grammar(ARITHMETIC), random.Random(11)
    for _ in range(300):
        text = _sentence(rng)
        state = compiled.start()
        assert state.feed_all(text.encode()) and state.complete, text
        # a closing parenthesis too many, or an operator at the end, is not a sentence
        assert not state.copy().feed(ord(")")) or text.count("(") > text.count(")")
        tail = state.copy()
        assert tail.feed(ord("+")) and not tail.complete
    assert compiled.start().feed_all(b"((1+2)*-3)") and not compiled.start().feed_all(b"1++2")


def test_bytes_of_one_character_may_arrive_apart_and_impossible_lead_bytes_are_refused():
    state = Grammar("root ::= [α-ω]+").start()
    data = "αω".encode()
    assert state.feed(data[0]) and not state.complete and state.feed(data[1])
    assert state.complete and not state.final
    assert not Grammar("root ::= [α-ω]+").start().feed("é".encode()[0])  # U+00C0-U+00FF
    assert not Grammar('root ::= "a"').start().feed(0xFF)
    state = Grammar("root ::= .+").start()  # a surrogate half is no character, even for `.`
    assert state.feed(0xED) and not state.feed(0xA0)
    assert Grammar("root ::= .+").start().feed_all("\ud7ff\ue000".encode())
    done = Grammar('root ::= "ab"').start()
    assert done.feed_all(b"ab") and done.final


@pytest.mark.parametrize(
    ("grammar", "message"),
    [("", "empty"), ('a ::= "x"', "rule named root"), ("root ::= a", "'a' is used but not"),
     ('root ::= root "x" | "y"', "left recursion: root -> root"),
     ('root ::= a "x" | "y"\na ::= "b"? root', "left recursion: root -> a -> root"),
     ('root ::= "x" root', "'root' can never end"),
     # a class that holds no character (not even one text can carry) reads nothing: "" was
     # followed as the rule's sentence, a call of this grammar finished "stop" with ""
     ("root ::= [^\\x00-\\U0010FFFF]", "'root' can never end: it has no sentence"),
     ('root ::= "a" x\nx ::= [\\uD800-\\uDFFF]', "'root' can never end"),
     ('root ::= "abc', "line 1, column 10: an unclosed string"),
     ("root ::= [b-a]", "backwards range"), ('root ::= "x"\nroot ::= "y"', "line 2, column 1"),
     ('start: "a"', "a rule (name ::= ...) expected"), ('root ::= "\\q"', "escape \\\\q"),
     ('root ::= "a"{3,1}', "below the minimum"), ('root ::= ("a"', "unclosed group"),
     ('root ::= "a"{999}', "at most 256"), ('root ::= "\\x4"', "2 hex digits"),
     ("root ::= [a", "unclosed character class"), ('root ::= "a" )', "expected"),
     ("root ::= [a-", "line 1, column 10: an unclosed character class")],
)  # fmt: skip
def test_grammars_that_cannot_be_followed_are_refused_with_the_reason(grammar: str, message: str):
    with pytest.raises(GrammarError, match=re.escape(message) if "\\" not in message else message):
        Grammar(grammar)
    with pytest.raises(ValueError):
        SamplingParams(grammar=grammar)


SQL = """
root ::= "SELECT " column " FROM " table (" WHERE " condition)?
column ::= "col_" [1-3] | "*"
table ::= [a-z]+
condition ::= column " = " [0-9]+ | "(" condition ")"
"""
SQL_RE = r"SELECT (col_[1-3]|\*) FROM [a-z]+( WHERE (\()*(col_[1-3]|\*) = [0-9]+(\))*)?"


def test_an_alternative_that_reads_from_an_empty_class_is_only_never_taken():
    state = Grammar('root ::= "a" | [^\\x00-\\U0010FFFF]').start()
    assert not state.complete and state.feed_all(b"a") and state.final


def test_the_engine_writes_sentences(tiny_llama_path: Path):
    engine = LLMEngine.from_pretrained(str(tiny_llama_path))
    prompts = [engine.tokenizer.encode(p) for p in ("Query:", "A parrot", "x y z")]
    for sampling in (SamplingParams(max_tokens=24, temperature=0, grammar=SQL),
                     SamplingParams(max_tokens=24, temperature=1.0, seed=3, grammar=SQL)):  # fmt: skip
        for out in engine.generate(prompts, sampling):
            assert Grammar(SQL).start().feed_all(out.text.encode()), out.text
            if out.finish_reason == "stop":
                assert re.fullmatch(SQL_RE, out.text), out.text
            assert out.text.startswith("SELECT ")
