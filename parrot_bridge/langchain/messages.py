"""LangChain messages as the chat messages the server's chat API reads: text content, and an
AI message's tool calls and tool results as OpenAI shapes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

_ROLES = {"system", "developer", "user", "assistant"}
# an assistant's blocks that are not its text: its calls (LangChain's, OpenAI's, Anthropic's
# `tool_use`), which `tool_calls` carries, and its reasoning, which ChatOpenAI drops too
_CARRIED_ELSEWHERE = {
    "tool_call", "function_call", "tool_use", "thinking", "reasoning", "reasoning_content"
}


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """[{"role", "content", ...}, ...]; unsupported messages (images, say) raise ValueError."""
    out = []
    for i, m in enumerate(messages):
        message: dict[str, Any] = {"role": _role(m, i), "content": _text(m, i)}
        if m.name is not None:  # the author's, for the chat template (as ChatOpenAI sends it)
            message["name"] = m.name
        if isinstance(m, AIMessage) and (m.tool_calls or m.invalid_tool_calls):
            message["tool_calls"] = _tool_calls(m)
        if isinstance(m, ToolMessage):
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def _role(message: BaseMessage, index: int) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage) and message.role in _ROLES:
        return message.role
    raise ValueError(
        f"messages[{index}]: {type(message).__name__} is not supported by ChatParrot "
        "(system, human, AI and tool messages only)"
    )


def _tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    """The calls as OpenAI's API takes them back; an invalid call keeps the text it had."""
    calls = [(c["id"], c["name"], json.dumps(c["args"])) for c in message.tool_calls]
    calls += [(c["id"], c["name"], c["args"] or "") for c in message.invalid_tool_calls]
    return [
        {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
        for id_, name, arguments in calls
    ]


def _text(message: BaseMessage, index: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    texts = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in _CARRIED_ELSEWHERE:
            continue  # the message's tool_calls carry it; reasoning is not sent back
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"messages[{index}]: {kind!r} content is not supported by ChatParrot (text only)"
            )
    return "".join(texts)
