"""vLLM's `POST /tokenize` and `POST /detokenize`: a prompt's token ids exactly as a request
would compute them (a text as `/v1/completions` encodes it, or chat messages through the model's
chat template as `/v1/chat/completions` does, with its tools if given), and back. Clients count tokens with them
(LangChain's `get_num_tokens`, trimming a history to the context) without the model's tokenizer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.api.openai import check_model
from server.api.openai_inputs import chat_prompt, check_token_ids
from server.api.openai_models import ChatCompletionRequest, ChatMessage
from server.api.route import Route, json_response, parse_body, prepare
from server.api.tool_request import ToolRequest
from server.engine_driver import EngineDriver
from server.keys import CONFIG, DRIVER


def tokenize_routes() -> list[Route]:
    tag = "openai"
    return [
        Route("POST", "/tokenize", tokenize,
              "vLLM's: a prompt (or chat messages) as the token ids a request would use", tag,
              body=TokenizeRequest, response=TokenizeResponse),
        Route("POST", "/detokenize", detokenize, "vLLM's: token ids back to text", tag,
              body=DetokenizeRequest, response=DetokenizeResponse),
    ]  # fmt: skip


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="The served model (default: it).")
    prompt: str | None = Field(None, description="A completion prompt; or `messages`.")
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict] | None = Field(None, description="With messages: as a chat request.")
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_special_tokens: bool | None = Field(
        None,
        description="Add the tokenizer's special tokens (BOS), as a request would: by default "
        "for a prompt, not for messages (the chat template writes its own).",
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.prompt is not None and (self.tools or self.tool_choice is not None):
            raise ValueError("tools and tool_choice go with messages, not a prompt")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


async def tokenize(request: web.Request) -> web.Response:
    body = await parse_body(request, TokenizeRequest)
    model = request.app[CONFIG].model_id if body.model is None else body.model
    check_model(request, model)
    driver = request.app[DRIVER]
    ids = await prepare(request, lambda: _token_ids(driver, body, model))
    return json_response(
        TokenizeResponse(count=len(ids), max_model_len=driver.max_model_len, tokens=ids)
    )


def _token_ids(driver: EngineDriver, body: TokenizeRequest, model: str) -> list[int]:
    if body.messages is not None:
        chat = ChatCompletionRequest(
            model=model,
            messages=body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs,
        )
        tools = ToolRequest.of(body.tools, body.tool_choice, body.parallel_tool_calls)
        text = chat_prompt(driver, chat, tools)
    else:
        assert body.prompt is not None
        text = body.prompt
    special = body.messages is None if body.add_special_tokens is None else body.add_special_tokens
    return driver.encode_prompt(text, special)


async def detokenize(request: web.Request) -> web.Response:
    body = await parse_body(request, DetokenizeRequest)
    if body.model is not None:
        check_model(request, body.model)
    driver = request.app[DRIVER]
    check_token_ids(driver, body.tokens, "tokens")
    return json_response(DetokenizeResponse(prompt=driver.tokenizer.decode(body.tokens)))
