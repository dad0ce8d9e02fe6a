"""A LlamaIndex prompt rendered with Semantic Variable markers in place of its arguments.

The prompt's constant text (the template, partial values such as the query, the LLM's system
prompt) stays constant text, so calls that share it share a prefix on the server; each argument
becomes an input variable. Rendering goes through the prompt's own `format`, so the text the model
sees is exactly what LlamaIndex would send.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parrot_bridge.template import TemplateError, parse_template
from parrot_bridge.variable import SemanticVariable

__all__ = ["Joined", "MarkedPrompt", "UnmarkablePromptError", "mark_prompt"]

OUTPUT_NAME = "answer"

Argument = str | SemanticVariable


@dataclass(frozen=True, slots=True)
class Joined:
    """An argument made of several values joined by `separator` (e.g. the summaries that one
    tree-summarize call reads). With `strip`, each part is inserted without its leading and
    trailing whitespace (`{{input:name|strip}}`: the server strips outputs as they arrive)."""

    parts: Sequence[Argument]
    separator: str = "\n\n"
    strip: bool = False


@dataclass(frozen=True, slots=True)
class MarkedPrompt:
    """A Parrot template (`{{input:...}}` per argument, `{{output:answer}}` at the end) and the
    values of its inputs."""

    source: str
    inputs: dict[str, Argument]


class UnmarkablePromptError(ValueError):
    """The call cannot be a semantic call: its prompt cannot keep its arguments as variables
    (its formatting transforms them, or its constant text looks like a marker), or the LLM
    asks for request fields that semantic calls do not take; callers fall back to plain text."""


def mark_prompt(render: Callable[..., str], args: dict[str, object]) -> MarkedPrompt:
    """Render with markers: `render(**args)` must format the prompt (as `LLM._get_prompt` does).

    String, variable and `Joined` arguments become inputs; other values are rendered as text.
    """
    marked_args: dict[str, object] = {}
    inputs: dict[str, Argument] = {}
    for name, value in args.items():
        if isinstance(value, Joined):
            names = [f"{name}_{i}" for i in range(len(value.parts))]
            inputs.update(zip(names, value.parts, strict=True))
            transform = "strip" if value.strip else None
            marked_args[name] = value.separator.join(_marker(n, transform) for n in names)
        elif isinstance(value, str | SemanticVariable):
            inputs[name] = value
            marked_args[name] = _marker(name)
        else:
            marked_args[name] = value
    source = render(**marked_args) + "{{output:" + OUTPUT_NAME + "}}"
    try:
        template = parse_template(source)
    except TemplateError as exc:
        raise UnmarkablePromptError(f"the rendered prompt is not a valid template: {exc}") from exc
    if sorted(template.inputs) != sorted(inputs):
        raise UnmarkablePromptError(
            f"the prompt's formatting changed its arguments: expected inputs {sorted(inputs)}, "
            f"found {sorted(template.inputs)}"
        )
    if template.outputs != [OUTPUT_NAME]:
        raise UnmarkablePromptError("the prompt's constant text contains an output marker")
    return MarkedPrompt(source, inputs)


def _marker(name: str, transform: str | None = None) -> str:
    return "{{input:" + name + ("|" + transform if transform else "") + "}}"
