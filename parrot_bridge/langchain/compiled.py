"""`compile(chain)`: an LCEL chain run as Semantic Variable graphs on a Parrot server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableSequence,
    RunnableSerializable,
)
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, PrivateAttr

from parrot_bridge.langchain.chat_model import ChatParrot
from parrot_bridge.langchain.llm import ParrotLLM
from parrot_bridge.langchain.reporting import last_chunk
from parrot_bridge.langchain.tracer import ClientStream, TracedCall, Tracer, log_split_once
from parrot_bridge.langchain.window import run_window, window_size
from parrot_bridge.session import Session
from parrot_bridge.variable import Criteria

__all__ = ["CompiledChain", "compile"]


def compile(runnable: Runnable | dict[str, Any], criteria: Criteria = "latency") -> CompiledChain:  # noqa: A001
    """`runnable` as a Runnable whose every call is traced into one graph of semantic calls,
    submitted lazily in one request; only the final outputs are awaited, with `criteria`.

    Steps that cannot be traced split the graph (logged once per step); the answer is the
    same as `runnable`'s with greedy sampling. A lambda that receives generated text is first
    called with placeholders, then with two fragile probe texts (whitespace, quotes, a
    backslash, mixed case, non-ASCII): if it only places the text (f-strings, `+`, `join`,
    dicts), giving the same result around each, it stays in the graph; if it reads it (str
    methods, `re`, `json`, ...), it is called again with the real values. So such lambdas
    should be free of side effects. Limit: a change to text that neither probe holds (replacing
    one word, say) looks like placement. Async-only lambdas run on the client.
    """
    return CompiledChain(chain=coerce_to_runnable(runnable), criteria=criteria)


class CompiledChain(RunnableSerializable[Any, Any]):
    """The Runnable that `compile` returns. `last_calls` lists the semantic calls of the
    latest trace (of its graph, or graphs: a window's, see `window`), for inspection."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chain: Runnable
    criteria: Criteria = "latency"
    _url: str = PrivateAttr()
    _timeout: float | None = PrivateAttr(None)
    _max_retries: int = PrivateAttr(2)
    _api_key: str | None = PrivateAttr(None)
    _split_steps: set[str] = PrivateAttr(default_factory=set)
    _warned_splits: set[str] = PrivateAttr(default_factory=set)
    _last_calls: list[TracedCall] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, context: Any) -> None:
        models = _parrot_models(self.chain)
        if not models:
            raise ValueError(
                "compile(): the chain has no ChatParrot or ParrotLLM step, so there is nothing "
                "to run as a graph (models are looked for in sequences, maps, bindings, "
                "with_fallbacks and configurable steps, not inside lambdas or other steps)"
            )
        self._url = models[0].base_url
        self._timeout = models[0].timeout
        self._max_retries = models[0].max_retries
        self._api_key = models[0]._key()

    @property
    def InputType(self) -> Any:  # noqa: N802
        return self.chain.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.chain.OutputType

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        return name or f"Compiled{self.chain.get_name()}" + (suffix or "")

    @property
    def last_calls(self) -> list[TracedCall]:
        return list(self._last_calls)

    @property
    def split_steps(self) -> set[str]:
        """Names of the steps that ran on the client on generated values so far: those that
        split a graph (warned about) and those that came after the whole graph (logged at
        INFO; a parser of the last answer, say); also the parallels and maps whose branches or
        items a `max_concurrency` made graphs of their own (warned about; see `window`)."""
        return set(self._split_steps)

    # -- Runnable ------------------------------------------------------------------------------
    # Each entry point goes through Runnable's `*_with_config` helpers: the compiled chain is
    # one run, and the steps it traces (prompts, model calls, steps run here) are its children.

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """All inputs traced into one session and one graph: where steps need generated values
        (a parser of the answer), every input is traced up to there and what they all need is
        submitted at once, then each goes on. With `return_exceptions`, an input whose trace
        fails (a step raising) gets its exception and the others their answers; a failure while
        the graph's values are awaited goes to every input still waiting.

        `config["max_concurrency"] = k` below the number of inputs (as in a plain batch: at most
        k inputs at once): each input is a graph of its own, k of them in flight at once, the
        next input starting as soon as one has its answer (a sliding window; see `window`). One
        graph cannot honour it: the server runs every call of a graph as soon as its inputs are
        there, and a graph carries no limit of its own. Without `return_exceptions`, once an
        input fails no further input starts, and the first failure in input order is raised."""
        return self._batch_with_config(
            self._run, inputs, config, return_exceptions=return_exceptions,
            keep_errors=return_exceptions,
        )  # fmt: skip

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return await self._abatch_with_config(
            self._arun, inputs, config, return_exceptions=return_exceptions,
            keep_errors=return_exceptions,
        )  # fmt: skip

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """The final output's generated text as it comes; other outputs arrive whole. A chat
        model's message comes as a plain stream's AIMessageChunks: one id for them all, the
        last with the finish reason and (with `stream_usage`) the usage. Model calls are
        reported to callbacks when the stream ends, without token events.

        Where the chain's last model step runs on the client (a chat call asking for logprobs,
        a model in `with_fallbacks` or `configurable_fields`, one of another server...), it and
        the steps after it stream as the plain chain streams them, chunk by chunk with token
        events, once the graph before it has its values; except a chat call asking for n > 1
        samples, which comes whole (one sample streams: ChatParrot's own stream refuses it)."""
        yield from self._transform_stream_with_config(iter([input]), self._transform, config)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(one(), self._atransform, config):
            yield chunk

    # -- helpers -------------------------------------------------------------------------------

    def _invoke(self, input: Any, config: RunnableConfig) -> Any:
        return self._run([input], [config])[0]

    async def _ainvoke(self, input: Any, config: RunnableConfig) -> Any:
        return (await self._arun([input], [config]))[0]

    async def _arun(
        self, inputs: list[Any], config: list[RunnableConfig], keep_errors: bool = False
    ) -> list[Any]:
        # the trace is synchronous (LangChain's steps are called as in `invoke`)
        return await run_in_executor(config[0], self._run, inputs, config, keep_errors)

    def _session(self) -> Session:
        return Session(
            self._url, name="langchain-compiled", timeout=self._timeout,
            max_retries=self._max_retries, api_key=self._api_key,
        )  # fmt: skip

    def _run(
        self, inputs: list[Any], config: list[RunnableConfig], keep_errors: bool = False
    ) -> list[Any]:
        """The outputs of `inputs`; with `keep_errors`, an input's exception is its output.
        With a `max_concurrency` of k below their number (the first config's, as LangChain's
        batch reads it), each input alone, k at once in a sliding window (see `batch`)."""
        limit = window_size(config[0], len(inputs)) if len(inputs) > 1 else None
        calls: list[list[TracedCall]] = [[] for _ in inputs]  # each input's, or the graph's
        try:
            if limit is None:
                return self._run_graph(inputs, config, calls[0], keep_errors)
            tasks = [partial(self._run_graph, [x], [c], found, keep_errors)
                     for x, c, found in zip(inputs, config, calls, strict=True)]  # fmt: skip
            outcomes = run_window(tasks, limit, stop_on_error=not keep_errors)
            for outcome in outcomes:
                if outcome.error is not None and not keep_errors:
                    raise outcome.error
            return [out.error if out.error is not None else out.value[0] for out in outcomes]
        finally:
            self._last_calls = [call for found in calls for call in found]

    def _run_graph(
        self, inputs: list[Any], config: list[RunnableConfig], calls: list[TracedCall],
        keep_errors: bool = False,
    ) -> list[Any]:  # fmt: skip
        """`_run` of inputs traced together, their semantic calls added to `calls`: each input
        as a strand of its own, so that what they wait for (a parser's answer, say) goes in one
        graph, not one graph per input."""
        with self._session() as session:
            tracer = self._tracer(session)
            try:
                outcomes = tracer.run_each(self.chain, inputs, list(config))
            finally:
                calls.extend(tracer.calls)
            for outcome in outcomes:
                if outcome.error is not None and not keep_errors:
                    raise outcome.error
            traced = [i for i, out in enumerate(outcomes) if out.error is None]
            outs: list[Any] = [out.error for out in outcomes]
            try:
                finished = tracer.finish([outcomes[i].value for i in traced])
            except Exception as exc:
                if not keep_errors:
                    raise
                finished = [exc] * len(traced)
            for i, out in zip(traced, finished, strict=True):
                outs[i] = out
            return outs

    def _transform(self, inputs: Iterator[Any], config: RunnableConfig) -> Iterator[Any]:
        (input,) = list(inputs)
        parts = _stream_parts(self.chain)
        with self._session() as session:
            tracer = self._tracer(session)
            if parts is None:
                out = tracer.run(self.chain, input, config)
            else:  # the sequence's steps one by one, as `run` takes them
                head, last, tail = parts
                out = input
                for step in head:
                    out = tracer.run(step, out, config)
                out = tracer.run_streamed(last, out, config)
                if isinstance(out, ClientStream):
                    self._last_calls = tracer.calls
                    yield from _plain_stream(last, tail, tracer.finish(out.value), config)
                    return
                for step in tail:
                    out = tracer.run(step, out, config)
            self._last_calls = tracer.calls
            if not isinstance(out, str | AIMessage) or not tracer.symbols.find(out):
                yield tracer.finish(out)
                return
            text = out.content if isinstance(out, AIMessage) else out
            tracer.commit()
            variables = tracer.symbols.find(text)
            session._loop.run(session._flush({v.id: self.criteria for v in variables}))
            message = isinstance(out, AIMessage)
            for part in tracer.symbols.parts(text):  # type: ignore[arg-type]
                chunks = [part] if isinstance(part, str) else part.stream(self.criteria)
                for chunk in chunks:
                    # a message's chunks share its id, as a plain chat stream's do
                    yield AIMessageChunk(content=chunk, id=out.id) if message else chunk
            done = tracer.finish(out)  # its usage; the callbacks of its model calls
            if message:
                yield last_chunk(done, tracer.model_runs)

    async def _atransform(
        self, inputs: AsyncIterator[Any], config: RunnableConfig
    ) -> AsyncIterator[Any]:
        (input,) = [x async for x in inputs]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def pump() -> None:
            try:
                for item in self._transform(iter([input]), config):
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        task = asyncio.ensure_future(run_in_executor(config, pump))  # starts it now
        while True:
            kind, item = await queue.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            yield item
        await task

    def _tracer(self, session: Session) -> Tracer:
        log_split = log_split_once(self._split_steps, self._warned_splits)

        def on_split(step: str, why: str, last: bool) -> None:
            with self._lock:  # the traces of a batch's window (and their windows) run at once
                log_split(step, why, last)

        return Tracer(session, self.criteria, self._timeout, on_split, new_session=self._session)


def _stream_parts(chain: Runnable) -> tuple[list[Runnable], Runnable, list[Runnable]] | None:
    """The chain's steps (nested sequences flattened) before its last step that holds a Parrot
    model, that step, and those after it, which `stream` streams as a plain chain does where
    that step runs on the client; None where nothing streams that way (no such step, or one
    after it that has only an async function, which a plain sync stream cannot run)."""
    steps = _flat_steps(chain)
    at = max((i for i, step in enumerate(steps) if _parrot_models(step)), default=None)
    if at is None or any(_async_only(step) for step in steps[at + 1 :]):
        return None
    return steps[:at], steps[at], steps[at + 1 :]


def _flat_steps(chain: Runnable) -> list[Runnable]:
    if isinstance(chain, RunnableSequence):
        return [inner for step in chain.steps for inner in _flat_steps(step)]
    return [chain]


def _async_only(step: Runnable) -> bool:
    return isinstance(step, RunnableLambda) and not hasattr(step, "func")


def _plain_stream(
    last: Runnable, tail: list[Runnable], value: Any, config: RunnableConfig
) -> Iterator[Any]:
    """`last | tail` streamed on `value` as a plain sequence streams it: `last`'s chunks (a
    model's tokens), through each later step's `transform`."""
    chunks = last.stream(value, config)
    for step in tail:
        chunks = step.transform(chunks, config)
    yield from chunks


def _parrot_models(runnable: Any) -> list[ChatParrot | ParrotLLM]:
    """The Parrot models reachable in a chain's structure (not inside lambdas), also those in
    wrappers that the trace runs on the client (`with_fallbacks`, `configurable_fields`): the
    server to talk to is theirs."""
    if isinstance(runnable, ChatParrot | ParrotLLM):
        return [runnable]
    children: list[Any] = []
    for attr in ("steps", "bound", "mapper", "runnable", "fallbacks", "default"):
        child = getattr(runnable, attr, None)
        if isinstance(child, list | tuple):
            children.extend(child)
        elif isinstance(child, Runnable):
            children.append(child)
    for attr in ("steps__", "alternatives"):
        steps = getattr(runnable, attr, None)
        if isinstance(steps, dict):
            children.extend(steps.values())
    return [m for child in children for m in _parrot_models(child)]
