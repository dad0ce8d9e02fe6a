"""Chat messages rendered with the model's chat template into Parrot template text.

Adapters (the LangChain compiler) turn chat prompts whose contents hold Semantic Variables into
semantic calls. Only the server knows the model's chat template, so it renders here: variables
come in as content parts, and go out as `{{input:name}}` markers in text whose constant parts
are escaped. A template that changes contents (trims them, say) could not keep a marker in
place, so each render is checked with probe values and refused when it is not transparent.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from parrot_bridge.template import escape_text
from server.api.route import Route, json_response, parse_body, prepare
from server.api.tool_request import check_tool_calls, has_tool_turns, render_tool_turns
from server.engine.tokenizer import Tokenizer
from server.engine_driver import EngineDriver
from server.errors import ApiError, bad_request
from server.keys import CONFIG, DRIVER

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def chat_render_routes() -> list[Route]:
    return [
        Route("POST", "/v1/chat/render", render_chat,
              "Render chat messages (contents may hold variables) into template text",
              "adapters", body=ChatRenderRequest, response=ChatRenderResponse),
    ]  # fmt: skip


class RenderPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "variable"]
    text: str | None = Field(None, description="The text of a text part.")
    name: str | None = Field(None, pattern=_NAME, description="The input name of a variable.")

    @model_validator(mode="after")
    def _one_field(self) -> RenderPart:
        if self.type == "text" and (self.text is None or self.name is not None):
            raise ValueError("a text part has 'text' and no 'name'")
        if self.type == "variable" and (self.name is None or self.text is not None):
            raise ValueError("a variable part has 'name' and no 'text'")
        return self


class RenderMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: list[RenderPart] | str
    name: str | None = Field(
        None, description="The author's name, for the chat template (as the chat API passes it)."
    )
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="An assistant's past calls, in OpenAI's shape."
    )
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")


class ChatRenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversations: list[list[RenderMessage]] = Field(
        min_length=1, max_length=4096, description="Each rendered on its own."
    )
    add_generation_prompt: bool = True


class RenderedPrompt(BaseModel):
    template: str = Field(description="Constant text escaped, variables as {{input:name}}.")
    variables: list[str] = Field(description="Input names in order of first appearance.")
    text: str | None = Field(None, description="The prompt text, when it has no variables.")
    prompt_tokens: int | None = Field(None, description="Its tokens, when it has no variables.")


class ChatRenderResponse(BaseModel):
    model: str
    max_model_len: int
    prompts: list[RenderedPrompt]


async def render_chat(request: web.Request) -> web.Response:
    body = await parse_body(request, ChatRenderRequest)
    driver = request.app[DRIVER]
    prompts = await prepare(request, lambda: _rendered_prompts(driver, body))
    response = ChatRenderResponse(
        model=request.app[CONFIG].model_id, max_model_len=driver.max_model_len, prompts=prompts
    )
    return json_response(response)


def _rendered_prompts(driver: EngineDriver, body: ChatRenderRequest) -> list[RenderedPrompt]:
    def apply(messages: list[dict[str, Any]]) -> str:
        return template_text(driver.tokenizer, messages, body.add_generation_prompt)

    prompts = []
    for i, conversation in enumerate(body.conversations):
        messages = [_message(m, i, j) for j, m in enumerate(conversation)]
        try:
            rendered = render_with_variables(apply, messages)
        except NotTransparentError as exc:
            raise ApiError(400, f"conversations[{i}]: {exc}", code="chat_template_not_transparent",
                           param=f"conversations.{i}") from exc  # fmt: skip
        except Exception as exc:  # a template's raise_exception or a model without a template
            raise bad_request(f"conversations[{i}]: cannot apply the chat template: {exc}",
                              param=f"conversations.{i}") from exc  # fmt: skip
        # as the chat API counts it (a call of the rendered template sends add_special_tokens
        # false): what the template writes, no BOS added
        tokens = len(driver.encode(rendered.text)) if rendered.text is not None else None
        prompts.append(
            RenderedPrompt(template=rendered.template, variables=list(rendered.variables),
                           text=rendered.text, prompt_tokens=tokens)
        )  # fmt: skip
    return prompts


# -- rendering (pure) ----------------------------------------------------------------------------

Part = tuple[Literal["text", "variable"], str]


@dataclass(frozen=True, slots=True)
class Rendered:
    template: str
    variables: tuple[str, ...]
    text: str | None  # set when there are no variables


class NotTransparentError(ValueError):
    """The chat template does not insert message contents verbatim."""


def render_with_variables(
    apply: Callable[[list[dict[str, Any]]], str], messages: list[dict[str, Any]]
) -> Rendered:
    """Render `messages` ({"role", "parts"}, and "tool_calls" or "tool_call_id" if any) with
    `apply` (the chat template), keeping variable parts as markers. Raises
    `NotTransparentError` when a probe value does not come out as it went in."""
    tag = uuid.uuid4().hex
    sentinel = {name: f"PARROTVAR{tag}{i}X" for i, name in enumerate(_names(messages))}
    if not sentinel:
        text = apply([_fill(m, {}) for m in messages])
        return Rendered(escape_text(text), (), text)
    rendered = apply([_fill(m, sentinel) for m in messages])
    by_sentinel = {s: n for n, s in sentinel.items()}
    pieces = re.split(f"({'|'.join(map(re.escape, by_sentinel))})", rendered)
    probe = {n: f"\n {{{{x}}}} 'q\" {n} \t\n" for n in sentinel}
    expected = "".join(probe[by_sentinel[p]] if p in by_sentinel else p for p in pieces)
    if apply([_fill(m, probe) for m in messages]) != expected:
        raise NotTransparentError(
            "the model's chat template changes message contents (trims or escapes them), so "
            "variables cannot be kept as markers in its output"
        )
    template = "".join(
        f"{{{{input:{by_sentinel[p]}}}}}" if p in by_sentinel else escape_text(p) for p in pieces
    )
    return Rendered(template, tuple(sentinel), None)


def template_text(
    tokenizer: Tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool
) -> str:
    """`messages` through the chat template; past calls and results render as the chat API
    renders them (`tool_request`), so a compiled chain's prompt is the one its plain call
    sends."""
    if has_tool_turns(messages):
        messages = render_tool_turns(messages, None)
    return tokenizer.apply_chat_template(messages, add_generation_prompt)


def _message(message: RenderMessage, conversation: int, index: int) -> dict[str, Any]:
    content = message.content
    parts: list[Part] = (
        [("text", content)]
        if isinstance(content, str)
        else [("variable", p.name) if p.type == "variable" else ("text", p.text) for p in content]  # type: ignore[misc]
    )
    out: dict[str, Any] = {"role": message.role, "parts": parts}
    if message.name is not None:
        out["name"] = message.name
    where = f"conversations[{conversation}]: messages[{index}]"
    if message.role == "tool":
        if message.tool_call_id is None:
            raise bad_request(f"{where}: a tool message needs tool_call_id",
                              param=f"conversations.{conversation}")  # fmt: skip
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        if message.role != "assistant":
            raise bad_request(f"{where}: only assistant messages have tool_calls",
                              param=f"conversations.{conversation}")  # fmt: skip
        try:
            out["tool_calls"] = check_tool_calls(message.tool_calls, index)
        except ApiError as exc:
            raise bad_request(f"conversations[{conversation}]: {exc.message}",
                              param=f"conversations.{conversation}") from exc  # fmt: skip
    return out


def _names(messages: list[dict[str, Any]]) -> list[str]:
    names = (value for m in messages for kind, value in m["parts"] if kind == "variable")
    return list(dict.fromkeys(names))


def _fill(message: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    content = "".join(values[v] if k == "variable" else v for k, v in message["parts"])
    rest = {k: v for k, v in message.items() if k != "parts"}  # role, tool_calls, ...
    return {**rest, "content": content}
