"""The text a constraint forces next, on each kind of automaton: the whole forced run, nothing
where two bytes may follow or the text may end, and never more than the limit."""

from __future__ import annotations

import pytest

from server.engine import SamplingParams
from server.engine.forced_text import forced_text
from server.engine.output_constraint import text_constraint

CAT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "mood": {"enum": ["happy", "grumpy"]}},
    "required": ["name", "mood"],
}

NICK = {
    "type": "object",
    "properties": {"alias": {"type": "string"}, "name": {"type": "string"}},
    "required": ["name"],
}

DOG = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "good": {"type": "boolean"}},
    "required": ["name", "age", "good"],
}  # fmt: skip


def _after(sampling: SamplingParams, text: bytes):
    automaton = text_constraint(sampling)
    assert automaton is not None and automaton.feed_all(text)
    return automaton


@pytest.mark.parametrize(
    ("sampling", "text", "forced"),
    [
        (SamplingParams(regex=r'\{"name": "[a-z]{1,20}", "age": \d{1,2}\}'), b"", b'{"name": "'),
        (SamplingParams(regex=r'\{"name": "[a-z]{1,20}", "age": \d{1,2}\}'), b'{"name": "ab"',
         b', "age": '),
        (SamplingParams(regex=r'\{"name": "[a-z]{1,20}", "age": \d{1,2}\}'), b'{"name": "ab', b""),
        (SamplingParams(choices=["The answer is yes", "The answer is no"]), b"", b"The answer is "),
        (SamplingParams(choices=["The answer is yes", "The answer is no"]), b"The answer is n", b"o"),
        (SamplingParams(choices=["The answer is yes", "The answer is no"]), b"The answer is no", b""),
        # where whitespace may come but need not, JSON's usual spacing is drafted
        (SamplingParams(json_object=True, json_schema=CAT), b'{"n', b'ame": "'),
        (SamplingParams(json_object=True, json_schema=CAT), b'{"name": "Felix"', b', "mood": "'),
        (SamplingParams(json_object=True, json_schema=CAT), b'{"name":"Felix",', b' "mood":"'),
        (SamplingParams(json_object=True, json_schema=CAT), b'{"name": "Felix", "mood": "g',
         b'rumpy"}'),
        # keys come in the schema's order: a required first key is forced, an optional one not
        (SamplingParams(json_object=True, json_schema=CAT), b"", b'{"name": "'),
        (SamplingParams(json_object=True, json_schema=CAT), b'{"', b'name": "'),
        (SamplingParams(json_object=True, json_schema=NICK), b'{"', b""),  # "alias" or "name"
        (SamplingParams(json_object=True, json_schema=NICK), b'{"alias": "x", "', b'name": "'),
        # the text's own spacing, where it has some, over JSON's usual one
        (SamplingParams(json_object=True, json_schema=CAT), b'{\n  "name": "Felix",\n  "mood"',
         b': "'),
        (SamplingParams(json_object=True, json_schema=CAT), b'{\n  "name" : "Felix"',
         b', "mood" : "'),
        (SamplingParams(json_object=True, json_schema=DOG), b'{\n  "name": "Rex",\n  "age": 3,',
         b'\n  "good":'),  # then true or false
        (SamplingParams(json_object=True), b"{", b""),  # a key or the end
        (SamplingParams(json_object=True), b'{"a"', b":"),  # then any value
        (SamplingParams(grammar='root ::= "yes, " [0-9]+ " cats"'), b"", b"yes, "),
        (SamplingParams(grammar='root ::= "yes, " [0-9]+ " cats"'), b"yes, 12", b""),
    ],
)  # fmt: skip
def test_the_forced_run_and_no_more(sampling: SamplingParams, text: bytes, forced: bytes):
    automaton = _after(sampling, text)
    assert forced_text(automaton, 64, text) == forced
    assert forced_text(automaton, 3, text) == forced[:3]
    assert forced_text(automaton, 64, text) == forced  # the automaton itself is left as it was
    # the run ends where two bytes may follow (or the text may end): nothing forced there
    assert automaton.feed_all(forced) and forced_text(automaton, 64, text + forced) == b""
