"""The template parser shared by the SDK and the server."""

import pytest

from parrot_bridge.template import Input, Output, TemplateError, Text, escape_text, parse_template


def test_segments_in_order_with_offsets() -> None:
    t = parse_template("Doc: {{input:doc}}\nSummary: {{output:summary}}")
    assert t.segments == (
        Text("Doc: ", 0),
        Input("doc", 5),
        Text("\nSummary: ", 18),
        Output("summary", 28),
    )
    assert t.inputs == ["doc"]
    assert t.outputs == ["summary"]


def test_spaces_inside_markers_and_repeated_inputs() -> None:
    t = parse_template("{{ input : a }} and {{input:a}} -> {{output:b}}")
    assert t.inputs == ["a"]
    assert [type(s) for s in t.segments] == [Input, Text, Input, Text, Output]


def test_braces_that_are_not_markers_stay_text() -> None:
    t = parse_template('JSON {{"k": 1}} and {{ jinja }}: {{output:x}}')
    assert t.segments[0] == Text('JSON {{"k": 1}} and {{ jinja }}: ', 0)


def test_several_outputs_with_text_between() -> None:
    t = parse_template("Name: {{output:name}}\nAge: {{output:age}}\n")
    assert t.outputs == ["name", "age"]


@pytest.mark.parametrize(
    ("source", "line", "column", "needle"),
    [
        ("Hi {{inptu:x}} {{output:y}}", 1, 4, "unknown marker kind 'inptu'"),
        ("a\n  {{input:bad name}} {{output:y}}", 2, 3, "invalid variable name 'bad name'"),
        ("x {{input:doc} {{output:y}}", 1, 3, "unclosed marker"),
        ("{{output:y}} then {{output:", 1, 19, "unclosed marker"),
        ("no outputs {{input:x}}", 1, 23, "no {{output:name}} marker"),
        ("{{output:a}}{{output:b}}", 1, 13, "adjacent"),
        ("{{output:a}}{{input:b}} x", 1, 13, "directly follows output"),
        ("{{output:a}}, {{output:a}}", 1, 15, "appears twice"),
        ("{{input:a}} {{output:a}}", 1, 13, "both as an input and an output"),
        ("x {{input:a|upper}} {{output:y}}", 1, 3, "unknown transform 'upper' in "),
        ("x {{input:a|}} {{output:y}}", 1, 3, "unknown transform '' in "),
        ("x {{input:a|strip|strip}} {{output:y}}", 1, 3, "unknown transform 'strip|strip'"),
        ("x {{input:a}} {{output:y|strip}}", 1, 15, "only input markers take a transform"),
        ("x {{input:bad name|strip}} {{output:y}}", 1, 3, "invalid variable name 'bad name'"),
    ],
)
def test_errors_say_what_and_where(source: str, line: int, column: int, needle: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(source)
    assert (info.value.line, info.value.column) == (line, column)
    assert needle in str(info.value)
    assert str(info.value).startswith(f"line {line}, column {column}: ")


def test_non_string_template_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_template(None)  # type: ignore[arg-type]


def test_an_input_marker_may_name_a_transform() -> None:
    t = parse_template("A: {{input:a|strip}} B: {{ input : a | strip }} C: {{input:a}}{{output:y}}")
    inputs = [s for s in t.segments if isinstance(s, Input)]
    assert inputs == [Input("a", 3, "strip"), Input("a", 24, "strip"), Input("a", 51)]
    assert t.inputs == ["a"]  # one variable, read three times
    assert [s.render(" \n x y \t") for s in inputs] == ["x y", "x y", " \n x y \t"]


def test_unknown_transforms_list_the_known_ones() -> None:
    with pytest.raises(TemplateError, match=r"unknown transform 'lower' .*\(known: strip\)"):
        parse_template("{{input:a|lower}} {{output:y}}")


def test_escaped_markers_with_a_transform_stay_text() -> None:
    t = parse_template(escape_text("{{input:a|strip}}") + " {{input:a|strip}}{{output:y}}")
    assert t.segments[0] == Text("{{input:a|strip}} ", 0)
    assert t.segments[1] == Input("a", 20, "strip")
