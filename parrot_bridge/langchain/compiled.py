"""`compile(chain)`: an LCEL chain run as Semantic Variable graphs on a Parrot server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, PrivateAttr

from parrot_bridge.langchain.awaiting import get_all
from parrot_bridge.langchain.chat_model import ChatParrot
from parrot_bridge.langchain.llm import ParrotLLM
from parrot_bridge.langchain.tracer import TracedCall, Tracer, log_split_once
from parrot_bridge.session import Session
from parrot_bridge.variable import Criteria

__all__ = ["CompiledChain", "compile"]


def compile(runnable: Runnable | dict[str, Any], criteria: Criteria = "latency") -> CompiledChain:  # noqa: A001
    """`runnable` as a Runnable whose every call is traced into one graph of semantic calls,
    submitted lazily in one request; only the final outputs are awaited, with `criteria`.

    Steps that cannot be traced split the graph (logged once per step); the answer is the
    same as `runnable`'s with greedy sampling. A lambda that receives generated text is first
    called with placeholders: if it only places the text (f-strings, `+`, `join`, dicts) it
    stays in the graph; if it reads it, it is called again with the real values. So such
    lambdas should be free of side effects.
    """
    return CompiledChain(chain=coerce_to_runnable(runnable), criteria=criteria)


class CompiledChain(RunnableSerializable[Any, Any]):
    """The Runnable that `compile` returns. `last_calls` lists the semantic calls of the
    latest trace (its graph), for inspection."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chain: Runnable
    criteria: Criteria = "latency"
    _url: str = PrivateAttr()
    _split_steps: set[str] = PrivateAttr(default_factory=set)
    _last_calls: list[TracedCall] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, context: Any) -> None:
        models = _parrot_models(self.chain)
        if not models:
            raise ValueError(
                "compile(): the chain has no ChatParrot or ParrotLLM step, so there is nothing "
                "to run as a graph"
            )
        self._url = models[0].base_url

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
        """Names of the steps that split a graph so far."""
        return set(self._split_steps)

    # -- Runnable ------------------------------------------------------------------------------

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(lambda x: self._run([x], config)[0], input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await run_in_executor(config, self.invoke, input, config)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """All inputs traced into one session and one graph."""
        if not inputs:
            return []
        first = config[0] if isinstance(config, list) else config
        if return_exceptions:
            try:
                return self._run(inputs, first)
            except Exception as exc:  # the graph is shared, so one failure fails all
                return [exc] * len(inputs)
        return self._run(inputs, first)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        first = config[0] if isinstance(config, list) else config
        return await run_in_executor(
            first, lambda: self.batch(inputs, config, return_exceptions=return_exceptions)
        )

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """The final output's generated text as it comes (AIMessageChunks for a chat model's
        message); other outputs arrive whole."""
        with Session(self._url, name="langchain-compiled") as session:
            tracer = self._tracer(session)
            out = tracer.run(self.chain, input, config)
            self._last_calls = tracer.calls
            if not isinstance(out, str | AIMessage) or not tracer.symbols.find(out):
                yield tracer.resolve(out)
                return
            text = out.content if isinstance(out, AIMessage) else out
            tracer.commit()
            variables = tracer.symbols.find(text)
            session._loop.run(session._flush({v.id: self.criteria for v in variables}))
            for part in tracer.symbols.parts(text):  # type: ignore[arg-type]
                chunks = [part] if isinstance(part, str) else part.stream(self.criteria)
                for chunk in chunks:
                    yield AIMessageChunk(content=chunk) if isinstance(out, AIMessage) else chunk

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def pump() -> None:
            try:
                for item in self.stream(input, config):
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        task = loop.run_in_executor(None, pump)
        while True:
            kind, item = await queue.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            yield item
        await task

    # -- helpers -------------------------------------------------------------------------------

    def _run(self, inputs: list[Any], config: RunnableConfig | None) -> list[Any]:
        with Session(self._url, name="langchain-compiled") as session:
            tracer = self._tracer(session)
            outs = [tracer.run(self.chain, x, config) for x in inputs]
            self._last_calls = tracer.calls
            variables = tracer.symbols.find(outs)
            if variables:
                tracer.commit()
                values = dict(zip(variables, get_all(session, variables, self.criteria),
                                  strict=True))  # fmt: skip
                return tracer.symbols.substitute(outs, values.__getitem__)
            return tracer.symbols.untaint(outs)

    def _tracer(self, session: Session) -> Tracer:
        with self._lock:
            on_split = log_split_once(self._split_steps)
        return Tracer(session, self.criteria, on_split)


def _parrot_models(runnable: Any) -> list[ChatParrot | ParrotLLM]:
    """The Parrot models reachable in a chain's structure (not inside lambdas)."""
    if isinstance(runnable, ChatParrot | ParrotLLM):
        return [runnable]
    children: list[Any] = []
    for attr in ("steps", "bound", "mapper"):
        child = getattr(runnable, attr, None)
        if isinstance(child, list):
            children.extend(child)
        elif isinstance(child, Runnable):
            children.append(child)
    steps = getattr(runnable, "steps__", None)
    if isinstance(steps, dict):
        children.extend(steps.values())
    return [m for child in children for m in _parrot_models(child)]
