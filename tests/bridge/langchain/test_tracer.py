"""Tracing's pure parts: the conversation a traced chat call sends to the render route."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from parrot_bridge.langchain.messages import to_chat_messages
from parrot_bridge.langchain.tracer import Tracer


def test_a_traced_conversation_keeps_tool_calls_and_the_calls_results_answer() -> None:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}
    messages = to_chat_messages([HumanMessage("Weather?"), AIMessage("", tool_calls=[call]),
                                 ToolMessage("sunny", tool_call_id="c1")])  # fmt: skip
    session: Any = None  # building the conversation talks to no server
    conversation, inputs = Tracer(session)._conversation(messages)
    assert inputs == {}
    assert conversation[1]["tool_calls"] == messages[1]["tool_calls"]
    assert conversation[2] == {"role": "tool", "tool_call_id": "c1",
                               "content": [{"type": "text", "text": "sunny"}]}  # fmt: skip
