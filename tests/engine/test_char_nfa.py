"""Compiled patterns are packed: the automata kept in the compile caches hold a handful of objects
that the garbage collector tracks, not one list per state and one pair per edge, which made its
full passes (which stop the event loop and the step loop) grow with every large pattern."""

from __future__ import annotations

import gc
import uuid

import pytest

from server.engine.char_nfa import CharNfaBuilder
from server.engine.char_set import CharSet
from server.engine.grammar import Grammar
from server.engine.regex_prefix import Regex, RegexError

LOWER = CharSet(((97, 122),))


def test_equal_character_sets_are_kept_once_and_moves_keep_their_order():
    nfa = CharNfaBuilder(10, lambda: RegexError("too large"))
    a, b, c = nfa.new_state(), nfa.new_state(), nfa.new_state()
    nfa.edge(a, LOWER, b)
    nfa.edge(a, CharSet(((48, 57),)), c)
    nfa.edge(b, CharSet(((97, 122),)), c)  # equal to LOWER, built apart
    nfa.empty(c, a)
    nfa.empty(c, b)
    packed = nfa.packed()
    assert packed.charsets == (LOWER, CharSet(((48, 57),)))
    assert packed.edges == (((0, b), (1, c)), ((0, c),), ())
    assert packed.empty == ((), (), (a, b))
    assert len(packed) == 3


def test_a_builder_past_its_cap_raises_the_callers_error():
    nfa = CharNfaBuilder(2, lambda: RegexError("too large"))
    nfa.new_state()
    nfa.new_state()
    with pytest.raises(RegexError, match="too large"):
        nfa.new_state()


def big_grammar(rules: int) -> str:
    names = [f"r{uuid.uuid4().hex[:6]}{i}" for i in range(rules)]
    body = "\n".join(f'{n} ::= "w{i}" [a-z]' for i, n in enumerate(names))
    return "root ::= " + " ".join(names) + "\n" + body


@pytest.mark.parametrize(
    "compile_one",
    [lambda: Regex("([a-z]{1,100} ){1,240}"),  # ~48,000 states
     lambda: Grammar(big_grammar(3000))],  # ~60,000 states
    ids=["regex", "grammar"],
)  # fmt: skip
def test_a_large_compiled_pattern_leaves_few_objects_for_the_collector(compile_one):
    gc.collect()
    before = len(gc.get_objects())
    compiled = compile_one()
    assert compiled.start().feed_all(b"w")  # it works, and its memo is warm
    gc.collect()  # tuples of ints are untracked by the collector's first pass over them
    assert len(gc.get_objects()) - before < 100
