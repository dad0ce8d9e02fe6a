"""Lowering calls to generation steps (pure)."""

import pytest

from parrot_bridge.template import parse_template
from server.engine import SamplingParams
from server.engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS
from server.graph.call import Call, Sampling
from server.lowering import GenerateStep, lower_call


def make(template: str, stop: tuple[str, ...] = ()) -> Call:
    t = parse_template(template)
    return Call(
        id="c",
        template=t,
        inputs={n: n for n in t.inputs},
        outputs={n: n for n in t.outputs},
        sampling=Sampling(stop=stop),
    )


def test_single_output_renders_inputs_into_the_prompt() -> None:
    steps = lower_call(make("Doc: {{input:d}}\nSummary:{{output:s}}"), {"d": "cats"})
    assert steps == [GenerateStep("s", "Doc: cats\nSummary:", ())]


def test_transformed_inputs_are_rendered_through_their_transform() -> None:
    call = make("A: {{input:d|strip}}\n\nB: {{input:d}}|{{output:s}}")
    steps = lower_call(call, {"d": "\n cats \t"})
    assert steps == [GenerateStep("s", "A: cats\n\nB: \n cats \t|", ())]


def test_outputs_stop_at_the_following_constant_text() -> None:
    call = make("Q {{input:q}}\nName: {{output:n}}\nAge: {{output:a}}. End", stop=("###",))
    steps = lower_call(call, {"q": "?"})
    assert steps == [
        GenerateStep("n", "Q ?\nName: ", ("###", "\nAge:")),
        GenerateStep("a", "\nAge: ", ("###", ". End")),
    ]


def test_whitespace_between_outputs_is_the_stop_but_trailing_whitespace_is_not() -> None:
    steps = lower_call(make("{{output:a}}\n\n{{output:b}}\n"), {})
    assert steps == [GenerateStep("a", "", ("\n\n",)), GenerateStep("b", "\n\n", ())]


def test_inputs_between_outputs_are_appended_before_the_next_output() -> None:
    steps = lower_call(make("A: {{output:a}} then {{input:x}} B: {{output:b}}"), {"x": "X"})
    assert steps[1] == GenerateStep("b", " then X B: ", ())
    assert steps[0].stop == (" then",)


def test_constrained_outputs_end_by_their_constraint_not_the_following_text() -> None:
    t = parse_template("Q {{input:q}}\nJSON: {{output:j}}\nPick: {{output:p}}. End")
    for sampling in (Sampling(stop=("###",), json_schema='{"type": "object"}'),
                     Sampling(stop=("###",), choices=("a", "b")),
                     Sampling(stop=("###",), regex="a+"),
                     Sampling(stop=("###",), grammar='root ::= "a"+')):  # fmt: skip
        call = Call("c", t, {"q": "q"}, {"j": "j", "p": "p"}, sampling=sampling)
        assert [s.stop for s in lower_call(call, {"q": "?"})] == [("###",), ("###",)]


def test_constrained_sampling_is_checked() -> None:
    for bad, message in (
        (dict(json_schema="{}", choices=("a",)), "not several"),
        (dict(regex="a", choices=("a",)), "not several"),
        (dict(grammar='root ::= "a"', regex="a"), "not several"),
        (dict(grammar='root ::= "a"', ignore_eos=True), "ignore_eos"),
        (dict(choices=()), "non-empty"),
        (dict(choices=("a",), ignore_eos=True), "ignore_eos"),
    ):
        with pytest.raises(ValueError, match=message):
            Sampling(**bad)


def test_a_call_at_the_stop_cap_with_long_following_text_still_runs() -> None:
    """The text after an output is one stop more, cut to the longest stop string taken: a call
    with all the stop strings it may have, and more than that many characters after its
    output, makes sampling parameters that the engine takes."""
    most = tuple(f"s{i}" for i in range(MAX_STOP_STRINGS))
    after = "x" * (MAX_STOP_CHARS + 10)
    (step,) = lower_call(make("Q: {{output:a}}" + after, stop=most), {})
    assert step.stop == (*most, after[:MAX_STOP_CHARS])
    assert SamplingParams(stop=list(step.stop)).stop == list(step.stop)
    with pytest.raises(ValueError, match="at most"):
        SamplingParams(stop=[*step.stop, "one more"])
