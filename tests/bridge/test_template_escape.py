"""`escape_text`: any text, markers and braces included, reads back as constant text."""

import pytest

from parrot_bridge.template import Input, Output, Text, escape_text, parse_template

TRICKY = [
    "{{input:x}}",
    "{{input:x|strip}} and {{input:x|upper}}",
    "{{output:y}} and {{name: John}}",
    "{{input:",
    "{",
    "{{",
    "{{{",
    "{{{{",
    "a{{{{{b}}}}}c",
    'JSON {{"k": 1}} {{ jinja }}',
    "",
]


@pytest.mark.parametrize("text", TRICKY)
def test_escaped_text_round_trips_around_markers(text: str) -> None:
    source = escape_text(text) + "{{input:a}}" + escape_text(text) + "{{output:b}}"
    t = parse_template(source)
    expected = ([Text(text, 0)] if text else []) + [Input("a", 0)]
    expected += ([Text(text, 0)] if text else []) + [Output("b", 0)]
    got = [type(s)(getattr(s, "text", getattr(s, "name", None)), 0) for s in t.segments]
    assert got == expected


def test_four_braces_are_one_literal_pair_and_offsets_point_at_the_source() -> None:
    t = parse_template("x{{{{input:a}} {{input:b}}{{output:c}}")
    assert t.segments[0] == Text("x{{input:a}} ", 0)
    assert t.segments[1] == Input("b", 15)
    assert t.inputs == ["b"]
