"""`ChatParrot`: a LangChain chat model served by Parrot (drop-in for ChatOpenAI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from parrot_bridge.langchain.messages import to_chat_messages
from parrot_bridge.langchain.settings import ParrotSettings
from parrot_bridge.loop_thread import shared_loop

__all__ = ["ChatParrot"]

_CHAT = "/v1/chat/completions"


class ChatParrot(ParrotSettings, BaseChatModel):
    """Chat with the model of a Parrot server; the server applies the model's chat template.

    Text messages only (system, human, AI): no tool calling, structured output or images.
    Inside `parrot_bridge.langchain.compile(chain)`, its calls become semantic calls of one
    graph and give the same text as here with greedy sampling.

        llm = ChatParrot(base_url="http://127.0.0.1:9000", temperature=0, max_tokens=64)
        llm.invoke("Hello")
    """

    # an unknown option (OpenAI's `n`, say) must fail, not be dropped (LangChain's base ignores it)
    model_config = ConfigDict(extra="forbid")
    ls_model_type: ClassVar[Literal["chat", "llm"]] = "chat"
    streaming: bool = False

    @property
    def _llm_type(self) -> str:
        return "parrot-chat"

    # -- LangChain's hooks ---------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        body = self._body(messages, stop, kwargs, self._model_id(kwargs), stream=False)
        return _result(shared_loop().run(self._http().request("POST", _CHAT, body)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(
                self._astream(messages, stop, run_manager, **kwargs)
            )
        body = self._body(messages, stop, kwargs, await self._amodel_id(kwargs), stream=False)
        return _result(await shared_loop().arun(self._http().request("POST", _CHAT, body)))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        body = self._body(messages, stop, kwargs, self._model_id(kwargs), stream=True)
        http = self._http()
        for event in shared_loop().iterate(lambda: http.events(_CHAT, body)):
            chunk = _chunk(event)
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        body = self._body(messages, stop, kwargs, await self._amodel_id(kwargs), stream=True)
        http = self._http()
        async for event in shared_loop().aiterate(lambda: http.events(_CHAT, body)):
            chunk = _chunk(event)
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # -- helpers -------------------------------------------------------------------------------

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """The prompt tokens a request of `messages` uses: the model's chat template and
        tokenizer, on the server (`/tokenize`), so trimming a history to the context is exact."""
        if tools:
            raise ValueError("ChatParrot does not support tools")
        body: dict[str, Any] = {"messages": to_chat_messages(messages)}
        if self.model_name:
            body["model"] = self.model_name
        return shared_loop().run(self._http().request("POST", "/tokenize", body))["count"]

    def _body(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
        model: str, stream: bool,
    ) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "model": model,
            "messages": to_chat_messages(messages),
            **self._sampling(stop, kwargs),
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


def _usage(usage: dict[str, int]) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
    )


def _result(response: dict[str, Any]) -> ChatResult:
    choice = response["choices"][0]
    metadata = {"model_name": response["model"], "finish_reason": choice["finish_reason"],
                "model_provider": "parrot"}  # fmt: skip
    message = AIMessage(
        content=choice["message"]["content"],
        id=response["id"],
        usage_metadata=_usage(response["usage"]),
        response_metadata=metadata,
    )
    generation = ChatGeneration(
        message=message, generation_info={"finish_reason": choice["finish_reason"]}
    )
    llm_output = {"token_usage": response["usage"], "model_name": response["model"]}
    return ChatResult(generations=[generation], llm_output=llm_output)


def _chunk(event: dict[str, Any]) -> ChatGenerationChunk:
    """A content delta, or (the usage event that ends the stream) the last chunk."""
    if not event["choices"]:
        usage = event.get("usage")
        message = AIMessageChunk(
            content="",
            usage_metadata=_usage(usage) if usage else None,
            response_metadata={"model_name": event["model"], "model_provider": "parrot"},
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)
    choice = event["choices"][0]
    reason = choice.get("finish_reason")
    message = AIMessageChunk(
        content=choice["delta"].get("content") or "",
        id=event["id"],
        response_metadata={"finish_reason": reason} if reason else {},
    )
    info = {"finish_reason": reason} if reason else None
    return ChatGenerationChunk(message=message, generation_info=info)
