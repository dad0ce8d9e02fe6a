"""The server's chat rendering with variables (pure part; the route runs in the live tests)."""

from __future__ import annotations

import jinja2
import pytest

from parrot_bridge.template import Input, Text, parse_template
from server.api.chat_render import NotTransparentError, render_with_variables
from tests.tiny_models import CHATML_TEMPLATE

_chatml = jinja2.Environment(keep_trailing_newline=True).from_string(CHATML_TEMPLATE)


def chatml(messages: list[dict[str, str]]) -> str:
    return _chatml.render(messages=messages, add_generation_prompt=True)


def msg(role: str, *parts: tuple[str, str]) -> dict:
    return {"role": role, "parts": list(parts)}


def test_variables_become_markers_and_constants_are_escaped() -> None:
    messages = [
        msg("system", ("text", "Use {{input:x}} literally.")),
        msg("user", ("text", "Doc: "), ("variable", "doc"), ("text", " / "), ("variable", "q")),
    ]
    rendered = render_with_variables(chatml, messages)
    assert rendered.variables == ("doc", "q") and rendered.text is None
    template = parse_template(rendered.template + "{{output:a}}")
    assert template.inputs == ["doc", "q"]
    assert template.segments[0] == Text(
        "<|im_start|>system\nUse {{input:x}} literally.<|im_end|>\n<|im_start|>user\nDoc: ", 0
    )
    assert isinstance(template.segments[1], Input)
    # substituting values gives exactly what the chat template makes of them
    values = {"doc": "a {{b}} c", "q": "why?"}
    filled = "".join(values[s.name] if isinstance(s, Input) else getattr(s, "text", "")
                     for s in template.segments)  # fmt: skip
    plain = [{"role": "system", "content": "Use {{input:x}} literally."},
             {"role": "user", "content": "Doc: a {{b}} c / why?"}]  # fmt: skip
    assert filled == chatml(plain)


def test_without_variables_the_text_is_returned() -> None:
    rendered = render_with_variables(chatml, [msg("user", ("text", "hello {{"))])
    assert rendered.text == chatml([{"role": "user", "content": "hello {{"}])
    assert parse_template(rendered.template + "{{output:a}}").segments[0].text == rendered.text


def test_a_template_that_trims_contents_is_refused() -> None:
    trim = jinja2.Template("{% for m in messages %}[{{ m['content'] | trim }}]{% endfor %}")
    with pytest.raises(NotTransparentError, match="changes message contents"):
        render_with_variables(lambda m: trim.render(messages=m),
                              [msg("user", ("text", "Q: "), ("variable", "q"))])  # fmt: skip
