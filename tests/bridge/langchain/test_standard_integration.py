"""LangChain's standard integration suite for ChatParrot, against a live server (tiny model)."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from parrot_bridge.langchain import ChatParrot
from tests.bridge.langchain.json_bias import short_json_bias

pytestmark = pytest.mark.slow


class TestChatParrotIntegration(ChatModelIntegrationTests):
    url = ""  # the live server's, set by the fixture below

    @pytest.fixture(autouse=True)
    def _server(self, parrot_url: str) -> None:
        type(self).url = parrot_url

    @property
    def chat_model_class(self) -> type[ChatParrot]:
        return ChatParrot

    @property
    def chat_model_params(self) -> dict:
        # short answers keep the suite fast on CPU; the tiny model's text is noise anyway
        return {"base_url": self.url, "max_tokens": 12, "temperature": 0}

    # Honest capability flags: text chat. bind_tools works (test_models_live.py), but the
    # suite's tool tests need a model that writes correct calls, which the tiny one cannot.
    @property
    def has_tool_calling(self) -> bool:
        return False

    # Structured output by JSON schema: the server writes the keys and keeps to the schema; the
    # tiny model's strings close at once (`short_json_bias`).
    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict:
        return {"method": "json_schema", "max_tokens": 64,
                "logit_bias": short_json_bias(self.url)}  # fmt: skip

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # a server serves one model
