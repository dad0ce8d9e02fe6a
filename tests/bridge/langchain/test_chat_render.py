"""The server's chat rendering with variables (pure part; the route runs in the live tests)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import jinja2
import pytest
import tokenizers

from parrot_bridge.template import Input, Text, parse_template
from server.api.chat_render import (
    ChatRenderRequest,
    NotTransparentError,
    _message,
    render_with_variables,
    template_text,
)
from server.api.openai_inputs import chat_prompt
from server.api.openai_models import ChatCompletionRequest
from server.engine.tokenizer import Tokenizer
from server.errors import ApiError
from tests.tiny_models import CHATML_TEMPLATE

TOKENIZER = Tokenizer(
    tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
    chat_template=CHATML_TEMPLATE,
)

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


def test_tool_turns_render_as_the_chat_api_renders_them() -> None:
    """A history with past calls and results (a LangChain chat prompt's, say) renders as the
    chat API would render it, so a compiled chain's prompt is its plain call's."""
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]
    body = ChatRenderRequest.model_validate({"conversations": [[
        *history, {"role": "user", "content": [{"type": "variable", "name": "q"}]}]]})  # fmt: skip
    messages = [_message(m, 0, j) for j, m in enumerate(body.conversations[0])]
    rendered = render_with_variables(lambda m: template_text(TOKENIZER, m, True), messages)
    plain = ChatCompletionRequest(model="m", messages=[*history, {"role": "user", "content": "Q"}])
    want = chat_prompt(SimpleNamespace(tokenizer=TOKENIZER), plain)  # type: ignore[arg-type]
    assert rendered.template.replace("{{input:q}}", "Q") == want
    assert "<tool_response>\nsunny\n</tool_response>" in want


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "tool", "content": "sunny"}, "messages[0]: a tool message needs tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": [{"id": "c"}]},
         "messages[0]: only assistant messages have tool_calls"),
        ({"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]},
         "messages[0].tool_calls[0] must be"),
    ],
)  # fmt: skip
def test_bad_tool_turns_are_400s_naming_the_message(message: dict, error: str) -> None:
    body = ChatRenderRequest.model_validate({"conversations": [[message]]})
    with pytest.raises(ApiError, match=re.escape(f"conversations[0]: {error}")):
        _message(body.conversations[0][0], 0, 0)
