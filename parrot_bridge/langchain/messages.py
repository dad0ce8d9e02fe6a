"""LangChain messages as the role/content pairs a chat template reads (text content only)."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)

_ROLES = {"system", "developer", "user", "assistant"}


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """[{"role", "content"}, ...]; unsupported messages (tools, images) raise ValueError."""
    return [{"role": _role(m, i), "content": _text(m, i)} for i, m in enumerate(messages)]


def _role(message: BaseMessage, index: int) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        if message.tool_calls:
            raise ValueError(f"messages[{index}]: tool calls are not supported by ChatParrot")
        return "assistant"
    if isinstance(message, ChatMessage) and message.role in _ROLES:
        return message.role
    raise ValueError(
        f"messages[{index}]: {type(message).__name__} is not supported by ChatParrot "
        "(system, human and AI messages only: no tool calling)"
    )


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
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"messages[{index}]: {kind!r} content is not supported by ChatParrot (text only)"
            )
    return "".join(texts)
