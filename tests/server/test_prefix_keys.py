"""Prefix keys by segment: boundaries before inputs (and after them), content keys across
sessions."""

import tracemalloc

from parrot_bridge.template import parse_template
from server.analysis import boundaries
from server.graph import Call


def make_call(template: str, cid: str = "c") -> Call:
    parsed = parse_template(template)
    inputs = {name: f"{cid}-{name}" for name in parsed.inputs}
    return Call(cid, parsed, inputs, {"out": f"{cid}-out"})


SYSTEM = "You are a helpful assistant. Answer briefly.\nUser: "


def before(bounds: list) -> list:
    """The boundaries that sit before an input."""
    return [b for b in bounds if not b.after_input]


def test_a_boundary_before_and_after_each_input_until_the_first_output() -> None:
    call = make_call(SYSTEM + "{{input:q}}\nDoc: {{input:d}}\nAssistant:{{output:out}} {{input:z}}")
    bounds = boundaries(call, {"q": "hi", "d": "text", "z": "later"})
    assert [b.text for b in bounds] == [
        SYSTEM, SYSTEM + "hi", SYSTEM + "hi\nDoc: ", SYSTEM + "hi\nDoc: text"
    ]
    assert [b.after_input for b in bounds] == [False, True, False, True]
    assert [b.num_segments for b in bounds] == [1, 2, 3, 4]
    assert len({b.key for b in bounds}) == 4


def test_no_boundary_after_an_input_that_an_input_or_the_output_follows() -> None:
    call = make_call("Rules.\n{{input:a}}{{input:b}} text {{input:c}}{{output:out}}")
    bounds = boundaries(call, {"a": "A", "b": "B", "c": "C"})
    assert [(b.text, b.after_input) for b in bounds] == [
        ("Rules.\n", False), ("Rules.\nA", False), ("Rules.\nAB", True),
        ("Rules.\nAB text ", False),
    ]


def test_boundaries_stop_at_the_first_input_without_a_value() -> None:
    call = make_call("Rules.\n{{input:a}} then {{input:b}} and {{input:c}}{{output:out}}")
    assert [b.text for b in boundaries(call, {"a": None, "b": "x", "c": "y"})] == ["Rules.\n"]
    bounds = boundaries(call, {"a": "A", "b": None, "c": "y"})
    assert [b.text for b in bounds] == ["Rules.\n", "Rules.\nA", "Rules.\nA then "]


def test_equal_leading_segments_share_keys_across_calls_and_sessions() -> None:
    one = make_call(SYSTEM + "{{input:q}}{{output:out}}", "session1-call")
    two = make_call(SYSTEM + "{{input:q}} again {{input:r}}{{output:out}}", "session2-call")
    k1 = boundaries(one, {"q": "what?"})
    k2 = boundaries(two, {"q": "what?", "r": "x"})
    assert k1[0].key == k2[0].key  # the same system prompt, whoever sends it
    other = make_call("You are a rude assistant.\nUser: {{input:q}}{{output:out}}")
    assert boundaries(other, {"q": "what?"})[0].key != k1[0].key


def test_a_prompt_without_the_tokenizers_bos_keys_apart_from_one_with_it() -> None:
    # the same text is other tokens when a call asks for no BOS (a chat-rendered prompt)
    template = SYSTEM + "{{input:q}}{{output:out}}"
    with_bos = boundaries(make_call(template), {"q": "what?"})
    raw = make_call(template, "raw")
    raw.add_special_tokens = False
    without = boundaries(raw, {"q": "what?"})
    assert [b.text for b in without] == [b.text for b in with_bos]
    assert not {b.key for b in without} & {b.key for b in with_bos}


def test_input_values_are_keyed_by_content_and_edges_matter() -> None:
    a = make_call("Doc: {{input:d}}\nQ: {{input:q}}{{output:out}}", "a")
    b = make_call("Doc: {{input:d}}\nQ: {{input:q}}{{output:out}}", "b")
    same = before(boundaries(a, {"d": "paper", "q": "1"}))[1].key
    assert same == before(boundaries(b, {"d": "paper", "q": "2"}))[1].key
    assert same != before(boundaries(b, {"d": "other paper", "q": "1"}))[1].key
    # the same rendered text split differently between text and value is another key
    c = make_call("Doc: p{{input:d}}\nQ: {{input:q}}{{output:out}}", "c")
    rendered = before(boundaries(c, {"d": "aper", "q": "1"}))[1]
    assert rendered.text == before(boundaries(a, {"d": "paper", "q": "1"}))[1].text
    assert rendered.key != same


def test_no_boundary_without_leading_text_or_inputs() -> None:
    (after,) = boundaries(make_call("{{input:d}} tail {{output:out}}"), {"d": "x"})
    assert after.after_input and after.text == "x"  # none before the input
    assert boundaries(make_call("Just write {{output:out}}"), {}) == []


def test_transformed_inputs_are_keyed_by_the_text_they_insert() -> None:
    stripped = make_call("Doc: {{input:d|strip}}\nQ: {{input:q}}{{output:out}}", "a")
    plain = make_call("Doc: {{input:d}}\nQ: {{input:q}}{{output:out}}", "b")
    bound = before(boundaries(stripped, {"d": "\n paper  ", "q": "1"}))[1]
    assert bound.text == "Doc: paper\nQ: "
    # the same filled text as an already clean value: one key, one stored prefix
    assert bound.key == before(boundaries(plain, {"d": "paper", "q": "1"}))[1].key
    assert bound.key != before(boundaries(plain, {"d": "\n paper  ", "q": "1"}))[1].key


def test_boundaries_of_a_call_with_many_inputs_do_not_copy_its_text_per_boundary() -> None:
    # A reduce reading hundreds of outputs has a boundary before and after each input, and its
    # boundaries are taken for every completion it waits on: rendering each boundary's text up
    # front held O(inputs^2) text (all but one never read).
    n, value = 300, "x" * 100
    inputs = " and ".join(f"{{{{input:s{i}}}}}" for i in range(n))
    call = make_call(f"Combine: {inputs}\nAll:{{{{output:out}}}}")
    values = {f"s{i}": value for i in range(n)}
    tracemalloc.start()
    try:
        bounds = boundaries(call, values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    prompt = bounds[-1].text
    assert len(bounds) == 2 * n and len(prompt) > n * len(value)
    assert peak < 20 * len(prompt)  # the text once (plus keys), not once per boundary
    assert bounds[n].text == prompt[: len(bounds[n].text)]
