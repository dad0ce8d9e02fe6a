"""Rendering LlamaIndex prompts with Semantic Variable markers (no server)."""

from __future__ import annotations

import pytest
from llama_index.core import PromptTemplate

from parrot_bridge import SemanticVariable, parse_template
from parrot_bridge.llamaindex.marked_prompt import Joined, UnmarkablePromptError, mark_prompt
from parrot_bridge.template import Input, Text


def render_back(source: str, values: dict[str, str]) -> str:
    """What the server sends to the model: constant text and input values, in order."""
    parts = []
    for seg in parse_template(source).segments:
        if isinstance(seg, Text):
            parts.append(seg.text)
        elif isinstance(seg, Input):
            parts.append(seg.render(values[seg.name]))
    return "".join(parts)


def test_constant_text_stays_and_arguments_become_inputs() -> None:
    prompt = PromptTemplate("Context:\n{context_str}\nQuery: {query_str}\nAnswer: ")
    prompt = prompt.partial_format(query_str="Why {braces}?")
    marked = mark_prompt(prompt.format, {"context_str": "some text"})
    assert (
        marked.source == "Context:\n{{input:context_str}}\nQuery: Why {braces}?\nAnswer: "
        "{{output:answer}}"
    )
    assert marked.inputs == {"context_str": "some text"}
    assert render_back(marked.source, marked.inputs) == prompt.format(context_str="some text")


def test_joined_arguments_and_variables() -> None:
    prompt = PromptTemplate("Summaries:\n{context_str}\nAnswer: ")
    a, b = SemanticVariable(name="a"), SemanticVariable(name="b")
    marked = mark_prompt(prompt.format, {"context_str": Joined([a, "middle", b])})
    assert marked.inputs == {"context_str_0": a, "context_str_1": "middle", "context_str_2": b}
    values = {"context_str_0": "A", "context_str_1": "middle", "context_str_2": "B"}
    assert render_back(marked.source, values) == prompt.format(context_str="A\n\nmiddle\n\nB")


def test_stripped_joins_mark_each_part_with_the_strip_transform() -> None:
    prompt = PromptTemplate("Summaries:\n{context_str}\nAnswer: ")
    a, b = SemanticVariable(name="a"), SemanticVariable(name="b")
    marked = mark_prompt(prompt.format, {"context_str": Joined([a, b], strip=True)})
    assert marked.source == (
        "Summaries:\n{{input:context_str_0|strip}}\n\n{{input:context_str_1|strip}}\nAnswer: "
        "{{output:answer}}"
    )
    values = {"context_str_0": "\n A ", "context_str_1": "B\n"}
    assert render_back(marked.source, values) == prompt.format(context_str="A\n\nB")


def test_non_string_arguments_are_rendered_as_text() -> None:
    prompt = PromptTemplate("Give {n} ideas about {topic}: ")
    marked = mark_prompt(prompt.format, {"n": 3, "topic": "birds"})
    assert marked.source == "Give 3 ideas about {{input:topic}}: {{output:answer}}"


def test_prompts_that_transform_arguments_are_refused() -> None:
    prompt = PromptTemplate("Say {topic}", function_mappings={"topic": lambda **kw: "fixed"})
    with pytest.raises(UnmarkablePromptError, match="changed its arguments"):
        mark_prompt(prompt.format, {"topic": "birds"})
    fake = PromptTemplate("{x} then {{output:y}} ")
    with pytest.raises(UnmarkablePromptError):
        mark_prompt(fake.format, {"x": "a"})
