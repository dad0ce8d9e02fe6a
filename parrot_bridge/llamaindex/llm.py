"""`Parrot`: a LlamaIndex LLM for a Parrot server.

Plain methods (`complete`, `chat` and their async/streaming forms) use the server's
OpenAI-compatible routes. `predict`/`apredict`/`stream`/`astream` keep LlamaIndex's prompt
template: its constant text becomes constant segments and each argument an input variable of a
semantic call, so sibling calls share prefixes on the server. Concurrent `apredict`s (e.g. one
tree-summarize level under `aquery`) go to the server as one graph. All of them dispatch the
callback and instrumentation events of the stock methods (token counting, debugging, tracing).
"""

from __future__ import annotations

import asyncio
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
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen

from parrot_bridge.function import SemanticFunction
from parrot_bridge.llamaindex.call_batch import CallBatch
from parrot_bridge.llamaindex.llm_events import apredicted, astreamed, predicted, streamed
from parrot_bridge.llamaindex.marked_prompt import UnmarkablePromptError, mark_prompt
from parrot_bridge.llamaindex.openai_http import OpenAIHttp
from parrot_bridge.llamaindex.reported_session import ReportedSession
from parrot_bridge.loop_thread import shared_loop
from parrot_bridge.session import Session
from parrot_bridge.variable import SemanticVariable

__all__ = ["Parrot"]


class Parrot(CustomLLM):
    """A Parrot server as a LlamaIndex LLM: `Settings.llm = Parrot(base_url="http://...:9000")`.

    `base_url` is the server's root. `model` defaults to the served model; the context window
    comes from the server's model card, the output length is `max_tokens`.
    """

    base_url: str = Field(description="The Parrot server's root URL, e.g. http://127.0.0.1:9000")
    model: str | None = Field(default=None, description="Model id (default: the served one)")
    temperature: float = Field(default=0.0, ge=0.0, description="0 samples greedily")
    max_tokens: int = Field(default=256, ge=1, description="Tokens generated per call at most")
    timeout: float = Field(default=600.0, gt=0, description="Seconds per HTTP request")
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Tokens LlamaIndex may fill (default: the server's max_model_len). LlamaIndex "
        "counts with its own tokenizer; lower this when the model's tokenizer is less dense.",
    )

    _http: OpenAIHttp = PrivateAttr()
    _card: dict[str, Any] | None = PrivateAttr(default=None)
    _batch: CallBatch | None = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http = OpenAIHttp(self.base_url, self.timeout)
        # the HTTP client lives on the SDK's loop: close it there once this LLM is gone
        weakref.finalize(self, _close_soon, self._http)

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

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
            is_chat_model=False,
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
            return predicted(self, prompt, prompt_args, var.get, var)

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

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        body = self._body(self._model_card(), prompt, kwargs)
        data = shared_loop().run(self._http.post("/v1/completions", body))
        return CompletionResponse(text=data["choices"][0]["text"], raw=data)

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        await self._amodel_card()  # before the callbacks, which read `metadata` (see there)
        return await self._acomplete(prompt, formatted, **kwargs)

    @llm_completion_callback()
    async def _acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        body = self._body(await self._amodel_card(), prompt, kwargs)
        data = await shared_loop().arun(self._http.post("/v1/completions", body))
        return CompletionResponse(text=data["choices"][0]["text"], raw=data)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        body = self._body(self._model_card(), prompt, kwargs)
        chunks = shared_loop().iterate(lambda: self._http.stream("/v1/completions", body))

        def gen() -> CompletionResponseGen:
            text = ""
            for chunk in chunks:
                delta = chunk["choices"][0]["text"] if chunk.get("choices") else ""
                text += delta
                yield CompletionResponse(text=text, delta=delta, raw=chunk)

        return gen()

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        await self._amodel_card()
        return await self._astream_complete(prompt, formatted, **kwargs)

    @llm_completion_callback()
    async def _astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        body = self._body(await self._amodel_card(), prompt, kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for chunk in shared_loop().aiterate(
                lambda: self._http.stream("/v1/completions", body)
            ):
                delta = chunk["choices"][0]["text"] if chunk.get("choices") else ""
                text += delta
                yield CompletionResponse(text=text, delta=delta, raw=chunk)

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
        return _chat_response(await shared_loop().arun(self._http.post("/v1/chat/completions", body)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        body = self._chat_body(self._model_card(), messages, kwargs)
        chunks = shared_loop().iterate(lambda: self._http.stream("/v1/chat/completions", body))

        def gen() -> ChatResponseGen:
            text = ""
            for chunk in chunks:
                delta = _chat_delta(chunk)
                text += delta
                message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
                yield ChatResponse(message=message, delta=delta, raw=chunk)

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
        body = self._chat_body(await self._amodel_card(), messages, kwargs)

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            async for chunk in shared_loop().aiterate(
                lambda: self._http.stream("/v1/chat/completions", body)
            ):
                delta = _chat_delta(chunk)
                text += delta
                message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
                yield ChatResponse(message=message, delta=delta, raw=chunk)

        return gen()

    # -- helpers -----------------------------------------------------------------------------

    def _sampling(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": float(self.temperature)}

    def _model_card(self) -> dict[str, Any]:
        """The served model's card (`/v1/models`), looked up once."""
        if self._card is None:
            self._card = self._pick_card(shared_loop().run(self._http.get("/v1/models")))
        return self._card

    async def _amodel_card(self) -> dict[str, Any]:
        """`_model_card` for the async methods: waiting on the lookup there would block the
        caller's event loop (every task on it) for as long as the server takes to answer."""
        if self._card is None:
            self._card = self._pick_card(await shared_loop().arun(self._http.get("/v1/models")))
        return self._card

    def _pick_card(self, listing: dict[str, Any]) -> dict[str, Any]:
        models = listing["data"]
        wanted = self.model or models[0]["id"]
        cards = [m for m in models if m["id"] == wanted]
        if not cards:
            served = [m["id"] for m in models]
            raise ValueError(f"model {wanted!r} is not served at {self.base_url}: {served}")
        return cards[0]

    def _body(self, card: dict[str, Any], prompt: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"model": card["id"], "prompt": prompt,
                **self._sampling(), **_extra(kwargs)}  # fmt: skip

    def _chat_body(
        self, card: dict[str, Any], messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> dict:
        plain = [{"role": _role(m), "content": m.content or ""} for m in messages]
        return {"model": card["id"], "messages": plain,
                **self._sampling(), **_extra(kwargs)}  # fmt: skip

    def _call(
        self, session: Session, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> SemanticVariable:
        marked = mark_prompt(lambda **args: self._get_prompt(prompt, **args), prompt_args)
        fn = SemanticFunction(marked.source, name="llamaindex_predict", **self._sampling())
        return fn.invoke(session, **marked.inputs)

    def _open_batch(self) -> CallBatch:
        loop = asyncio.get_running_loop()
        if self._batch is None or self._batch.closed or self._batch.loop is not loop:
            self._batch = CallBatch(self.session(name="llamaindex"), loop)
        return self._batch


def _close_soon(http: OpenAIHttp) -> None:
    asyncio.run_coroutine_threadsafe(http.close(), shared_loop().loop)


_PASSED_THROUGH = ("max_tokens", "temperature", "top_p", "stop", "seed")


def _extra(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Per-call sampling options LlamaIndex callers may pass; others are not for the server."""
    return {k: v for k, v in kwargs.items() if k in _PASSED_THROUGH and v is not None}


def _role(message: ChatMessage) -> str:
    role = message.role.value
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise ValueError(f"the Parrot server does not take chat messages with role {role!r}")
    return role


def _chat_response(data: dict[str, Any]) -> ChatResponse:
    content = data["choices"][0]["message"].get("content") or ""
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content), raw=data)


def _chat_delta(chunk: dict[str, Any]) -> str:
    if not chunk.get("choices"):
        return ""
    return chunk["choices"][0].get("delta", {}).get("content") or ""
