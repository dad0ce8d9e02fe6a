"""LangChain's standard unit suite for ChatParrot (no server needed)."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from parrot_bridge.langchain import ChatParrot


class TestChatParrotUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatParrot]:
        return ChatParrot

    @property
    def chat_model_params(self) -> dict:
        return {"model": "tiny-llama", "base_url": "http://127.0.0.1:9"}

    # Honest capability flags: text chat and tool calling.
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
