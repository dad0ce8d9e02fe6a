"""`ChatParrot`: a LangChain chat model served by Parrot (drop-in for ChatOpenAI)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    InputTokenDetails,
    InvalidToolCall,
    ToolCall,
    UsageMetadata,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, model_validator

from parrot_bridge.langchain.messages import to_chat_messages
from parrot_bridge.langchain.settings import (
    CHAT_ONLY_OPTIONS,
    SAMPLING_OPTIONS,
    TOOL_OPTIONS,
    ParrotSettings,
    without_tool_options,
)
from parrot_bridge.langchain.structured_output import Method, structured_output
from parrot_bridge.loop_thread import shared_loop

__all__ = ["ChatParrot"]

_CHAT = "/v1/chat/completions"


class ChatParrot(ParrotSettings, BaseChatModel):
    """Chat with the model of a Parrot server; the server applies the model's chat template.

    Text messages (system, human, AI, tool), tool calling (`bind_tools`, served by the chat
    API's `tools`), OpenAI's `response_format` and `with_structured_output`; no images. Inside
    `parrot_bridge.langchain.compile(chain)`, its calls become semantic calls of one graph and
    give the same text as here with greedy sampling (tools are refused there).

        llm = ChatParrot(base_url="http://127.0.0.1:9000", temperature=0, max_tokens=64)
        llm.invoke("Hello")
    """

    # an unknown option (OpenAI's `n`, say) must fail, not be dropped (LangChain's base ignores it)
    model_config = ConfigDict(extra="forbid")
    ls_model_type: ClassVar[Literal["chat", "llm"]] = "chat"
    request_options: ClassVar[dict[str, str]] = {**SAMPLING_OPTIONS, **CHAT_ONLY_OPTIONS}
    streaming: bool = False
    logprobs: bool | None = Field(
        None, description="Each token's logprob, in response_metadata['logprobs'] (OpenAI's)."
    )
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="With logprobs: that many likeliest tokens at each."
    )
    n: int | None = Field(None, ge=1, le=128, description="Samples per prompt (not streamed).")
    stream_usage: bool = Field(True, description="A stream ends with a chunk of its usage.")
    call_arguments: ClassVar[frozenset[str]] = ParrotSettings.call_arguments | {"stream_usage"}

    @model_validator(mode="after")
    def _check_stream_usage(self) -> ChatParrot:
        self._stream_usage({})  # model_kwargs' value: a bad one fails here, not per call
        return self

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
        result = _result(shared_loop().run(self._http().request("POST", _CHAT, body)))
        return self._with_parsed(result, kwargs)

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
        result = _result(await shared_loop().arun(self._http().request("POST", _CHAT, body)))
        return self._with_parsed(result, kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        body = self._body(messages, stop, kwargs, self._model_id(kwargs), stream=True)
        http, named = self._http(), "stream_options" not in body
        for event in shared_loop().iterate(lambda: http.events(_CHAT, body)):
            chunk = _chunk(event, named)
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
        http, named = self._http(), "stream_options" not in body
        async for event in shared_loop().aiterate(lambda: http.events(_CHAT, body)):
            chunk = _chunk(event, named)
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The model with `tools` offered on every call. `tool_choice`: "auto", "none",
        "required" (or "any", or True), a tool's name, or OpenAI's dict. `strict` (as
        ChatOpenAI's) sends OpenAI's strict schemas: no keys beyond `properties`, all required."""
        specs = [convert_to_openai_tool(t, strict=strict) for t in tools]
        options: dict[str, Any] = {"tools": specs}
        if tool_choice is not None:
            options["tool_choice"] = _tool_choice(tool_choice)
        if parallel_tool_calls is not None:
            options["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(**options, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Method = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """The model answering in `schema`'s shape (a pydantic or TypedDict class, or a JSON
        schema), parsed: a pydantic object, else a dict. As ChatOpenAI's, by `method`:
        "json_schema" (a response_format the server's decoding follows; the default),
        "json_mode" (any JSON object; `schema` optional, to parse into) or "function_calling"
        (a forced tool call). `include_raw`: {"raw", "parsed", "parsing_error"} instead. Other
        keyword arguments are call options, as for `bind`."""
        return structured_output(self, schema, method, include_raw, strict, kwargs)

    # -- helpers -------------------------------------------------------------------------------

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """The prompt tokens a request of `messages` uses: the model's chat template and
        tokenizer, on the server (`/tokenize`), so trimming a history to the context is exact;
        with `tools`, their description in the prompt too."""
        body: dict[str, Any] = {"messages": to_chat_messages(messages)}
        if tools:
            body["tools"] = [convert_to_openai_tool(t) for t in tools]
        if self.model_name:
            body["model"] = self.model_name
        return shared_loop().run(self._http().request("POST", "/tokenize", body))["count"]

    def _with_parsed(self, result: ChatResult, kwargs: dict[str, Any]) -> ChatResult:
        """With a pydantic class as response_format, each message carries the reply parsed
        into it as `additional_kwargs["parsed"]` (None where it does not validate, e.g. cut by
        max_tokens), as ChatOpenAI's messages do."""
        fmt = kwargs.get("response_format", self.model_kwargs.get("response_format"))
        if not (isinstance(fmt, type) and is_basemodel_subclass(fmt)):
            return result
        validate = getattr(fmt, "model_validate_json", None) or fmt.parse_raw  # pydantic v1
        for generation in result.generations:
            message = generation.message
            try:
                parsed = validate(message.text)
            except ValueError:  # pydantic's ValidationError, v1's and v2's
                parsed = None
            message.additional_kwargs["parsed"] = parsed
        return result

    def _body(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
        model: str, stream: bool,
    ) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "model": model,
            "messages": to_chat_messages(messages),
            **self._sampling(stop, without_tool_options(kwargs)),
            **{k: v for k, v in kwargs.items() if k in TOOL_OPTIONS},
            **self._extra_body(kwargs),  # over the request's own fields, as OpenAI's client
        }
        if stream:
            if body.get("n", 1) > 1:
                raise ValueError(f"ChatParrot: n={body['n']} cannot stream (one sample streams)")
            body["stream"] = True
            if self._stream_usage(kwargs):
                body["stream_options"] = {"include_usage": True}
        return body

    def _stream_usage(self, kwargs: dict[str, Any]) -> bool:
        """Whether a stream ends with its usage: per call, model_kwargs, else the field."""
        for source in (kwargs, self.model_kwargs):
            if source.get("stream_usage") is not None:
                if not isinstance(source["stream_usage"], bool):
                    raise ValueError(
                        f"ChatParrot: stream_usage={source['stream_usage']!r} is refused: "
                        "it is true or false"
                    )
                return source["stream_usage"]
        return self.stream_usage


def usage_metadata(usage: dict[str, Any]) -> UsageMetadata:
    """LangChain's usage of an OpenAI-shaped one: the prompt tokens that came from the server's
    prefix cache (or a shared prefix) are `cache_read`, as ChatOpenAI reports them."""
    metadata = UsageMetadata(
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
    )
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        metadata["input_token_details"] = InputTokenDetails(cache_read=details["cached_tokens"])
    return metadata


def _tool_choice(choice: str | bool | dict[str, Any]) -> str | dict[str, Any]:
    if choice is True or choice == "any":
        return "required"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    if choice is False:
        return "none"
    return choice


def _calls(message: dict[str, Any]) -> dict[str, list[Any]]:
    """The answer's tool calls as LangChain's: valid JSON-object arguments make a tool call,
    anything else an invalid one (the model's text kept)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in message.get("tool_calls") or []:
        name, arguments = raw["function"]["name"], raw["function"]["arguments"]
        try:
            args = json.loads(arguments)
        except ValueError:
            args = None
        if isinstance(args, dict):
            calls.append(tool_call(name=name, args=args, id=raw["id"]))
        else:
            invalid.append(invalid_tool_call(
                name=name, args=arguments, id=raw["id"], error="arguments are not a JSON object"
            ))  # fmt: skip
    return {"tool_calls": calls, "invalid_tool_calls": invalid}


def _result(response: dict[str, Any]) -> ChatResult:
    """One generation per choice (`n`), each with the request's usage, as ChatOpenAI's."""
    generations = []
    for choice in response["choices"]:
        metadata = {"model_name": response["model"], "finish_reason": choice["finish_reason"],
                    "model_provider": "parrot", "id": response["id"],
                    "system_fingerprint": response.get("system_fingerprint"),
                    "logprobs": choice.get("logprobs")}  # fmt: skip
        message = AIMessage(
            content=choice["message"]["content"] or "",
            **_calls(choice["message"]),
            id=response["id"],
            usage_metadata=usage_metadata(response["usage"]),
            response_metadata=metadata,
        )
        info = {"finish_reason": choice["finish_reason"]}
        if choice.get("logprobs") is not None:
            info["logprobs"] = choice["logprobs"]
        generations.append(ChatGeneration(message=message, generation_info=info))
    llm_output = {"token_usage": response["usage"], "model_name": response["model"],
                  "id": response["id"], "system_fingerprint": response.get("system_fingerprint")}
    return ChatResult(generations=generations, llm_output=llm_output)


def _chunk(event: dict[str, Any], named: bool = False) -> ChatGenerationChunk:
    """A content delta, or (the usage event that ends the stream) the last chunk. The model's
    name goes on the usage chunk, or where none comes (`named`) on the one that finishes (once:
    LangChain joins a name given twice into one string)."""
    if not event["choices"]:
        usage = event.get("usage")
        message = AIMessageChunk(
            content="",
            usage_metadata=usage_metadata(usage) if usage else None,
            response_metadata={"model_name": event["model"], "model_provider": "parrot"},
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)
    choice = event["choices"][0]
    reason = choice.get("finish_reason")
    chunks = [
        tool_call_chunk(name=c["function"]["name"], args=c["function"]["arguments"], id=c["id"],
                        index=c["index"])
        for c in choice["delta"].get("tool_calls") or []
    ]  # fmt: skip
    message = AIMessageChunk(
        content=choice["delta"].get("content") or "",
        tool_call_chunks=chunks,
        id=event["id"],
        response_metadata=_finish_metadata(event, reason, named),
    )
    info: dict[str, Any] = {"finish_reason": reason} if reason else {}
    if choice.get("logprobs") is not None:  # those of this chunk's tokens
        info["logprobs"] = choice["logprobs"]
    return ChatGenerationChunk(message=message, generation_info=info or None)


def _finish_metadata(event: dict[str, Any], reason: str | None, named: bool) -> dict[str, Any]:
    if not reason:
        return {}
    if not named:
        return {"finish_reason": reason}
    return {"finish_reason": reason, "model_name": event["model"], "model_provider": "parrot",
            "system_fingerprint": event.get("system_fingerprint")}  # fmt: skip
