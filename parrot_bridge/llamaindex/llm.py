"""`Parrot`: a LlamaIndex LLM for a Parrot server.

Plain methods (`complete`, `chat` and their async/streaming forms) use the server's
OpenAI-compatible routes. `predict`/`apredict`/`stream`/`astream` keep LlamaIndex's prompt
template: its constant text becomes constant segments and each argument an input variable of a
semantic call, so sibling calls share prefixes on the server. Concurrent `apredict`s (e.g. one
tree-summarize level under `aquery`) go to the server as one graph. All of them dispatch the
callback and instrumentation events of the stock methods (token counting, debugging, tracing).

`Parrot` is a function-calling LLM: `chat_with_tools`, `predict_and_call`, `structured_predict`
and `FunctionAgent` offer tools through the chat route's OpenAI tool calling.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    LogProb,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.tools import BaseTool
from llama_index.core.types import TokenAsyncGen, TokenGen

from parrot_bridge.function import SemanticFunction
from parrot_bridge.llamaindex.call_batch import CallBatch
from parrot_bridge.llamaindex.llm_events import apredicted, astreamed, predicted, streamed
from parrot_bridge.llamaindex.marked_prompt import UnmarkablePromptError, mark_prompt
from parrot_bridge.llamaindex.openai_http import OpenAIHttp
from parrot_bridge.llamaindex.reported_session import ReportedSession
from parrot_bridge.llamaindex.token_counts import token_counts
from parrot_bridge.loop_thread import shared_loop
from parrot_bridge.request_fields import SEMANTIC_FIELDS, checked_fields, semantic_options
from parrot_bridge.server_url import server_root
from parrot_bridge.session import Session
from parrot_bridge.variable import SemanticVariable

try:  # newer LlamaIndex LLMs (OpenAI's) record their calls as blocks too
    from llama_index.core.base.llms.types import ToolCallBlock
except ImportError:  # older llama-index-core: calls are in additional_kwargs only
    ToolCallBlock = None

__all__ = ["Parrot"]


class Parrot(FunctionCallingLLM):
    """A Parrot server as a LlamaIndex LLM: `Settings.llm = Parrot(base_url="http://...:9000")`.

    `base_url` is the server's root. `model` defaults to the served model; the context window
    comes from the server's model card, the output length is `max_tokens`.

    A function-calling LLM (`predict_and_call`, `chat_with_tools`, `structured_predict`,
    `FunctionAgent`): tools, `tool_choice` (`tool_required` is "required"; a tool's name forces
    that tool) and `parallel_tool_calls` go to the chat route, and answers keep the server's
    calls in `message.additional_kwargs["tool_calls"]` (OpenAI's shape, as LlamaIndex's OpenAI
    LLM keeps them). Past calls and `tool` messages (`additional_kwargs["tool_call_id"]`) go
    back as history.
    """

    base_url: str = Field(description="The Parrot server's root URL, e.g. http://127.0.0.1:9000")
    model: str | None = Field(default=None, description="Model id (default: the served one)")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 samples greedily")
    max_tokens: int = Field(default=256, ge=1, description="Tokens generated per call at most")
    timeout: float = Field(
        default=600.0, gt=0, description="Seconds per HTTP request (in a stream: per chunk)"
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="How often a request that could not connect (a server starting) is sent "
        "again, as LlamaIndex's OpenAI LLM's (0.5 s, then 1, 2, 4, up to 8 s apart).",
    )
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Tokens LlamaIndex may fill (default: the server's max_model_len). LlamaIndex "
        "counts with its own tokenizer; lower this when the model's tokenizer is less dense.",
    )
    logprobs: bool | None = Field(
        default=None, description="Each token's likeliest alternatives in `logprobs` (OpenAI's)."
    )
    top_logprobs: int = Field(default=0, ge=0, le=20, description="How many, with logprobs.")
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="More request fields for every call, as LlamaIndex's OpenAI LLM takes them "
        "(top_p, seed, stop, penalties, vLLM's top_k, min_p, guided_regex, ...).",
    )
    api_key: str | None = Field(
        default=None, description="The server's --api-key, if it has one (a bearer token)."
    )
    # a misspelt or unknown setting (OpenAI's `api_base`, say) fails rather than being dropped
    model_config = ConfigDict(extra="forbid")

    # the HTTP client for the settings in `_http_for`, built when first needed
    _http_client: OpenAIHttp | None = PrivateAttr(default=None)
    _http_for: tuple[Any, ...] | None = PrivateAttr(default=None)
    _card: dict[str, Any] | None = PrivateAttr(default=None)
    _card_for: tuple[Any, ...] | None = PrivateAttr(default=None)
    _batch: CallBatch | None = PrivateAttr(default=None)

    def __copy__(self) -> Parrot:
        # `model_copy` (and copy.copy) share private attributes: the copy gets a client of its
        # own, so that each LLM closes only what it built
        return _unshared(super().__copy__())

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Parrot:
        memo = {} if memo is None else memo
        for live in (self._http_client, self._batch):  # sockets and a loop: copied as None
            if live is not None:
                memo[id(live)] = None
        return _unshared(super().__deepcopy__(memo))

    @property
    def _http(self) -> OpenAIHttp:
        """The HTTP client for the current `base_url`, `timeout`, `api_key` and `max_retries`:
        pydantic lets a user assign them (or `model_copy` with new ones) after construction,
        and a client built once would keep the old ones. And for the SDK's loop: a process
        forked from this one has a loop of its own, where the parent's client cannot run."""
        settings = (self.base_url, self.timeout, self.api_key, self.max_retries, shared_loop())
        if self._http_client is None or self._http_for != settings:
            http = OpenAIHttp(self.base_url, self.timeout, self.api_key, self.max_retries)
            # the client lives on the SDK's loop: close it there once this LLM is gone (not
            # before: a replaced client may still carry a call or stream in flight)
            weakref.finalize(self, _close_soon, http)
            self._http_client, self._http_for = http, settings
        return self._http_client

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return server_root(value, "base_url")  # an OpenAI client's ".../v1" too

    @field_validator("additional_kwargs")
    @classmethod
    def _check_additional_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # stream_options (LlamaIndex's OpenAI LLM takes it here) goes with streams only
        others = {k: v for k, v in value.items() if k != "stream_options"}
        checked = checked_fields("Parrot", "additional_kwargs", others)
        if "stream_options" in value:
            checked["stream_options"] = checked_fields(
                "Parrot", "additional_kwargs' stream_options", value["stream_options"]
            )
        return checked

    @classmethod
    def class_name(cls) -> str:
        return "Parrot"

    @property
    def metadata(self) -> LLMMetadata:
        # LlamaIndex reads this (synchronously) before every call, from its callbacks; the async
        # methods look the card up (awaited) before theirs, so it is at hand by then
        card = self._model_card()
        return LLMMetadata(
            context_window=self.context_window or card["max_model_len"],
            num_output=self.max_tokens,
            # predict and the synthesizers pick completion templates (their graph path); tool
            # calls go through `chat` either way
            is_chat_model=False,
            is_function_calling_model=True,
            model_name=card["id"],
        )

    # -- Semantic Variables ------------------------------------------------------------------

    def session(self, name: str | None = None) -> Session:
        """A new session on this server (synthesizers open one per query). The calls `call`
        records in it reach this LLM's callbacks and instrumentation when it closes."""
        return ReportedSession(self, name=name)

    def call(
        self, session: Session, prompt: BasePromptTemplate, **prompt_args: Any
    ) -> SemanticVariable:
        """Record `prompt` as a semantic call in `session` and return its output variable.

        Arguments may be strings, variables (outputs of earlier calls: the edge stays on the
        server) or `Joined` lists of them. Raises `UnmarkablePromptError` when the prompt's
        formatting would change its arguments. In a session from `session()`, the call gets the
        events `predict` dispatches once its answer is read, when the session closes.
        """
        var = self._call(session, prompt, prompt_args)
        if isinstance(session, ReportedSession):
            session.record(prompt, prompt_args, var)
        return var

    # predict and friends dispatch the stock methods' events themselves (see llm_events)

    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        session = self.session()
        try:
            var = self._call(session, prompt, prompt_args)
        except UnmarkablePromptError:
            return super().predict(prompt, **prompt_args)
        with session:
            return predicted(
                self, prompt, prompt_args, lambda: var.get(timeout=self.timeout), var
            )

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        # calls started in the same turn of the event loop join one batch: one graph
        batch = self._open_batch()
        try:
            var = batch.add(lambda session: self._call(session, prompt, prompt_args))
        except UnmarkablePromptError:
            return await super().apredict(prompt, **prompt_args)

        async def read() -> str:
            try:
                return await batch.read(var)
            finally:
                if self._batch is batch and batch.closed:
                    self._batch = None

        return await apredicted(self, prompt, prompt_args, read, var)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        session = self.session()
        try:
            var = self._call(session, prompt, prompt_args)
        except UnmarkablePromptError:
            return super().stream(prompt, **prompt_args)
        session.open()

        def chunks() -> Iterator[str]:
            try:
                yield from var.stream()
            finally:
                session.close()

        return streamed(self, prompt, prompt_args, chunks())

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        session = self.session()
        try:
            var = self._call(session, prompt, prompt_args)
        except UnmarkablePromptError:
            return await super().astream(prompt, **prompt_args)
        await session.aopen()

        async def chunks() -> AsyncIterator[str]:
            try:
                async for chunk in var.astream():
                    yield chunk
            finally:
                await session.aclose()

        return await astreamed(self, prompt, prompt_args, chunks())

    # -- completions (OpenAI-compatible route, no graph) -------------------------------------

    # as OpenAILike's: a prompt not yet formatted (`formatted=False`) is sent as
    # `completion_to_prompt` wraps it (a model's instruction format); the callbacks see it so

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(self._wrapped(prompt, formatted), formatted, **kwargs)

    @llm_completion_callback()
    def _complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        body = self._body(self._model_card(), prompt, kwargs)
        data = shared_loop().run(self._http.post("/v1/completions", body))
        return _completion_response(data)

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        await self._amodel_card()  # before the callbacks, which read `metadata` (see there)
        return await self._acomplete(self._wrapped(prompt, formatted), formatted, **kwargs)

    @llm_completion_callback()
    async def _acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        body = self._body(await self._amodel_card(), prompt, kwargs)
        data = await shared_loop().arun(self._http.post("/v1/completions", body))
        return _completion_response(data)

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return self._stream_complete(self._wrapped(prompt, formatted), formatted, **kwargs)

    @llm_completion_callback()
    def _stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        body = self._body(self._model_card(), prompt, kwargs, stream=True)
        chunks = shared_loop().iterate(lambda: self._http.stream("/v1/completions", body))

        def gen() -> CompletionResponseGen:
            text = ""
            for chunk in chunks:
                delta = chunk["choices"][0]["text"] if chunk.get("choices") else ""
                text += delta
                yield CompletionResponse(text=text, delta=delta, raw=chunk,
                                         additional_kwargs=token_counts(chunk))  # fmt: skip

        return gen()

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        await self._amodel_card()
        return await self._astream_complete(self._wrapped(prompt, formatted), formatted, **kwargs)

    @llm_completion_callback()
    async def _astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        body = self._body(await self._amodel_card(), prompt, kwargs, stream=True)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for chunk in shared_loop().aiterate(
                lambda: self._http.stream("/v1/completions", body)
            ):
                delta = chunk["choices"][0]["text"] if chunk.get("choices") else ""
                text += delta
                yield CompletionResponse(text=text, delta=delta, raw=chunk,
                                         additional_kwargs=token_counts(chunk))  # fmt: skip

        return gen()

    # -- chat (the server applies the model's chat template) ---------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        body = self._chat_body(self._model_card(), messages, kwargs)
        return _chat_response(shared_loop().run(self._http.post("/v1/chat/completions", body)))

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        await self._amodel_card()
        return await self._achat(messages, **kwargs)

    @llm_chat_callback()
    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        body = self._chat_body(await self._amodel_card(), messages, kwargs)
        return _chat_response(
            await shared_loop().arun(self._http.post("/v1/chat/completions", body))
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        body = self._chat_body(self._model_card(), messages, kwargs, stream=True)
        chunks = shared_loop().iterate(lambda: self._http.stream("/v1/chat/completions", body))

        def gen() -> ChatResponseGen:
            text, calls = "", []
            for chunk in chunks:
                delta = _chat_delta(chunk)
                text, calls = text + delta, calls + _call_deltas(chunk)
                yield ChatResponse(message=_assistant(text, calls), delta=delta, raw=chunk,
                                   additional_kwargs=token_counts(chunk))  # fmt: skip

        return gen()

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        await self._amodel_card()
        return await self._astream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def _astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        body = self._chat_body(await self._amodel_card(), messages, kwargs, stream=True)

        async def gen() -> ChatResponseAsyncGen:
            text, calls = "", []
            async for chunk in shared_loop().aiterate(
                lambda: self._http.stream("/v1/chat/completions", body)
            ):
                delta = _chat_delta(chunk)
                text, calls = text + delta, calls + _call_deltas(chunk)
                yield ChatResponse(message=_assistant(text, calls), delta=delta, raw=chunk,
                                   additional_kwargs=token_counts(chunk))  # fmt: skip

        return gen()

    # -- function calling (the chat route's tools) --------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """`chat`'s arguments for a turn that offers `tools`. `tool_choice`: "auto", "none",
        "required", a tool's name or OpenAI's dict; unset, "required" if `tool_required`."""
        messages = list(chat_history or [])  # the caller's history is left as it was
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
        if not specs:  # the server refuses a tool_choice without tools
            return {"messages": messages, **kwargs}
        return {"messages": messages, "tools": specs,
                "tool_choice": _tool_choice(tool_choice, tool_required),
                "parallel_tool_calls": allow_parallel_tool_calls, **kwargs}  # fmt: skip

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The answer's tool calls. Arguments that are not JSON (a call cut by `max_tokens`)
        are read as far as they go, else as {}, as LlamaIndex's OpenAI LLM reads them."""
        calls = _tool_calls(response.message)
        if not calls and error_on_no_tool_call:
            raise ValueError("Expected at least one tool call, but got 0 tool calls.")
        return [
            ToolSelection(
                tool_id=c.get("id") or "",
                tool_name=c["function"]["name"],
                tool_kwargs=_arguments(c["function"].get("arguments")),
            )
            for c in calls
        ]

    # -- helpers -----------------------------------------------------------------------------

    def _sampling(self, chat: bool) -> dict[str, Any]:
        """A plain request's sampling: the fields (logprobs as the route takes them: a count
        of alternatives for completions, a flag and a count for chat, as LlamaIndex's OpenAI
        LLM sends them), then `additional_kwargs` over them."""
        fields: dict[str, Any] = {"max_tokens": self.max_tokens,
                                  "temperature": float(self.temperature)}  # fmt: skip
        if self.logprobs and chat:
            fields.update(logprobs=True, top_logprobs=self.top_logprobs)
        elif self.logprobs:
            fields["logprobs"] = self.top_logprobs
        return {**fields, **self.additional_kwargs}

    def _semantic_sampling(self) -> dict[str, Any]:
        """The plain requests' sampling as a semantic call's options. Logprobs are left out:
        predict and the synthesizers read only the text (and get usage without asking). Other fields that no option does
        raise UnmarkablePromptError, so that the call goes the plain way, which sends them."""
        fields = {k: v for k, v in self._sampling(chat=False).items()
                  if k not in ("logprobs", "top_logprobs", "stream_options")}  # fmt: skip
        options, left = semantic_options("Parrot", "additional_kwargs", fields)
        if left:
            raise UnmarkablePromptError(
                f"additional_kwargs {', '.join(map(repr, left))}: semantic calls take no such "
                "options"
            )
        return options

    def _wrapped(self, prompt: str, formatted: bool) -> str:
        return prompt if formatted else self.completion_to_prompt(prompt)

    def _model_card(self) -> dict[str, Any]:
        """The served model's card (`/v1/models`), looked up once per server and model."""
        if self._card_stale():
            self._keep_card(self._pick_card(shared_loop().run(self._http.get("/v1/models"))))
        return self._card

    async def _amodel_card(self) -> dict[str, Any]:
        """`_model_card` for the async methods: waiting on the lookup there would block the
        caller's event loop (every task on it) for as long as the server takes to answer."""
        if self._card_stale():
            listing = await shared_loop().arun(self._http.get("/v1/models"))
            self._keep_card(self._pick_card(listing))
        return self._card

    def _card_stale(self) -> bool:
        # another base_url or model (assigned after a lookup) is another card
        return self._card is None or self._card_for != (self.base_url, self.model)

    def _keep_card(self, card: dict[str, Any]) -> None:
        self._card, self._card_for = card, (self.base_url, self.model)

    def _pick_card(self, listing: dict[str, Any]) -> dict[str, Any]:
        models = listing["data"]
        wanted = self.model or models[0]["id"]
        cards = [m for m in models if m["id"] == wanted]
        if not cards:
            served = [m["id"] for m in models]
            raise ValueError(f"model {wanted!r} is not served at {self.base_url}: {served}")
        return cards[0]

    def _body(
        self, card: dict[str, Any], prompt: str, kwargs: dict[str, Any], stream: bool = False
    ) -> dict[str, Any]:
        return _streamed({"model": card["id"], "prompt": prompt, **self._sampling(chat=False),
                          **_per_call(kwargs, chat=False)}, stream)  # fmt: skip

    def _chat_body(
        self,
        card: dict[str, Any],
        messages: Sequence[ChatMessage],
        kwargs: dict[str, Any],
        stream: bool = False,
    ) -> dict:
        body = {"model": card["id"], "messages": [_message(m) for m in messages],
                **self._sampling(chat=True), **_per_call(kwargs, chat=True)}  # fmt: skip
        return _streamed(body, stream)

    def _call(
        self, session: Session, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> SemanticVariable:
        sampling = self._semantic_sampling()
        marked = mark_prompt(lambda **args: self._get_prompt(prompt, **args), prompt_args)
        fn = SemanticFunction(marked.source, name="llamaindex_predict", **sampling)
        return fn.invoke(session, **marked.inputs)

    def _open_batch(self) -> CallBatch:
        loop = asyncio.get_running_loop()
        if self._batch is None or self._batch.closed or self._batch.loop is not loop:
            self._batch = CallBatch(self.session(name="llamaindex"), loop, self.timeout)
        return self._batch


def _close_soon(http: OpenAIHttp) -> None:
    asyncio.run_coroutine_threadsafe(http.close(), shared_loop().loop)


def _unshared(copy: Parrot) -> Parrot:
    """`copy` without the HTTP client and call batch of the LLM it was copied from."""
    copy._http_client = copy._http_for = copy._batch = None
    return copy


# what a plain call takes per call, besides `extra_body` (as OpenAI's client: more fields)
_PER_CALL = (
    *SEMANTIC_FIELDS, "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "user",
    "stream_options",
)  # fmt: skip
_TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")  # chat only


def _per_call(kwargs: dict[str, Any], chat: bool) -> dict[str, Any]:
    """A plain call's own request fields (None left out), as LlamaIndex's OpenAI LLM sends
    them, `extra_body`'s over them; ValueError for an argument that is none of them."""
    known = (*_PER_CALL, *_TOOL_OPTIONS) if chat else _PER_CALL
    unknown = sorted(set(kwargs) - set(known) - {"extra_body"})
    if unknown:
        raise ValueError(
            f"Parrot cannot send {', '.join(map(repr, unknown))}: a call takes "
            f"{', '.join(known)}; other request fields go in extra_body or additional_kwargs"
        )
    fields = {k: v for k, v in kwargs.items() if k in known and v is not None}
    return {**fields, **checked_fields("Parrot", "extra_body", kwargs.get("extra_body"))}


def _streamed(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """`body` as a streamed request or not: `stream_options` (e.g. `include_usage`, for the
    server's token counts in the last chunk) is left out of a request that does not stream,
    as LlamaIndex's OpenAI LLM leaves it out (the server refuses it there)."""
    if not stream:
        body.pop("stream_options", None)
    return body


def _role(message: ChatMessage) -> str:
    role = message.role.value
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise ValueError(f"the Parrot server does not take chat messages with role {role!r}")
    return role


def _message(message: ChatMessage) -> dict[str, Any]:
    """`message` as the chat route takes it: an assistant's past tool calls and the call a
    `tool` message answers go along (the server renders them as tool turns). Media blocks
    are refused: `content` is the text blocks only, so an image was dropped without a word
    and the model described one it never saw."""
    media = [type(b).__name__ for b in message.blocks if type(b).__name__ in _MEDIA_BLOCKS]
    if media:
        raise ValueError(
            f"Parrot's models read text only: a {message.role.value} message's {media[0]} "
            "cannot be sent (OpenAI-compatible servers of text models answer it with a 400)"
        )
    plain: dict[str, Any] = {"role": _role(message), "content": message.content or ""}
    calls = _tool_calls(message)
    if calls:
        plain["tool_calls"] = calls
    call_id = message.additional_kwargs.get("tool_call_id")
    if plain["role"] == "tool" and call_id is not None:
        plain["tool_call_id"] = call_id
    return plain


_MEDIA_BLOCKS = frozenset({"ImageBlock", "AudioBlock", "VideoBlock", "DocumentBlock"})


def _tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    """`message`'s tool calls in OpenAI's shape: `additional_kwargs["tool_calls"]` (dicts, or
    the OpenAI client's objects, which LlamaIndex's OpenAI LLM keeps there), else its
    `ToolCallBlock`s (how that LLM's newer versions also record them)."""
    raw = message.additional_kwargs.get("tool_calls") or []
    calls = [c.model_dump() if hasattr(c, "model_dump") else c for c in raw]
    if calls or ToolCallBlock is None:
        return calls
    return [
        {"id": b.tool_call_id, "type": "function",
         "function": {"name": b.tool_name, "arguments": _arguments_text(b.tool_kwargs)}}
        for b in message.blocks if isinstance(b, ToolCallBlock)
    ]  # fmt: skip


def _arguments_text(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _arguments(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """A call's arguments as keyword arguments; {} where they are not (partial) JSON of an
    object."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = parse_partial_json(arguments or "{}")
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _tool_choice(choice: str | dict[str, Any] | None, required: bool) -> str | dict[str, Any]:
    """LlamaIndex's `tool_choice` (which may be a tool's name) as OpenAI's."""
    if choice is None:
        return "required" if required else "auto"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    return choice


def _assistant(content: str, calls: list[dict[str, Any]] | None) -> ChatMessage:
    extra = {"tool_calls": calls} if calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, content=content, additional_kwargs=extra)


def _completion_response(data: dict[str, Any]) -> CompletionResponse:
    """The first choice, its logprobs (asked for) as LlamaIndex's OpenAI LLM reports them:
    per token, its likeliest alternatives."""
    choice = data["choices"][0]
    scored = (choice.get("logprobs") or {}).get("top_logprobs") or []
    logprobs = [[LogProb(token=t, logprob=v) for t, v in top.items()] for top in scored]
    return CompletionResponse(text=choice["text"], raw=data, logprobs=logprobs or None,
                              additional_kwargs=token_counts(data))  # fmt: skip


def _chat_response(data: dict[str, Any]) -> ChatResponse:
    choice = data["choices"][0]
    message = choice["message"]
    scored = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [
        [LogProb(token=a["token"], logprob=a["logprob"], bytes=a.get("bytes") or [])
         for a in entry["top_logprobs"]]
        for entry in scored if entry.get("top_logprobs")
    ]  # fmt: skip
    return ChatResponse(
        message=_assistant(message.get("content") or "", message.get("tool_calls")),
        raw=data,
        logprobs=logprobs or None,
        additional_kwargs=token_counts(data),
    )


def _chat_delta(chunk: dict[str, Any]) -> str:
    if not chunk.get("choices"):
        return ""
    return chunk["choices"][0].get("delta", {}).get("content") or ""


def _call_deltas(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls a streamed chunk completes. The server sends each call whole, in one
    delta, in `index` order, so the calls seen so far are these appended in turn."""
    if not chunk.get("choices"):
        return []
    deltas = chunk["choices"][0].get("delta", {}).get("tool_calls") or []
    return [{"id": d.get("id"), "type": d.get("type", "function"), "function": d["function"]}
            for d in deltas]  # fmt: skip
