"""The server's handle on one engine: contexts that remember their tokens, plain requests, stats.

Everything the server asks of an engine goes through here, so an engine only needs to provide
the same few methods: the in-process `AsyncLLMEngine` and `EngineProcess` (an engine in a child
process) do; an OpenAI-compatible backend would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from server.engine import EngineConfig, EngineError, EngineStats, JobOutput, SamplingParams
from server.engine.dtype_name import check_dtype_name
from server.engine.model_name import check_model_name
from server.engine_process import EngineProcess
from server.stream_merge import merge_streams
from server.token_prefix import common_prefix_len

if TYPE_CHECKING:  # the in-process engine (and torch) loads only where engines run in-process
    from server.engine import AsyncLLMEngine

    Engine: TypeAlias = AsyncLLMEngine | EngineProcess


@dataclass(frozen=True, slots=True)
class FillResult:
    kept: int  # tokens the context already held that the target starts with
    filled: int  # tokens appended (and computed)


class EngineDriver:
    """One engine behind the context primitives, started and stopped with the server."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        respawn: Callable[[], Awaitable[EngineProcess]] | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self._respawn = respawn  # a fresh engine like this one (engines in child processes)

    @property
    def alive(self) -> bool:
        """Its engine takes work (an engine process that died does not)."""
        return self.engine.alive

    @property
    def restartable(self) -> bool:
        return self._respawn is not None

    async def restart(self) -> None:
        """Replace the engine with a fresh one of the same model and settings, started. The
        old engine's contexts are not carried over: its calls failed with it."""
        if self._respawn is None:
            raise RuntimeError(f"engine {self.name!r} runs in this process: it cannot restart")
        engine = await self._respawn()
        await engine.start()
        self.engine = engine

    @staticmethod
    def check(model: str, dtype: str | None, **config: Any) -> None:
        """Refuse (ValueError), before any model loads, what `load` would refuse: the engine's
        settings, the dtype, a model that is not there."""
        EngineConfig(**config)
        if dtype is not None:
            check_dtype_name(dtype)
        check_model_name(model)

    @classmethod
    async def load(cls, model: str, device: str, dtype: str | None, **config: Any) -> EngineDriver:
        """Load a model (in a thread: it takes seconds) and wrap it; `start()` runs it."""
        return (await cls.load_many(1, model, device, dtype, **config))[0]

    @classmethod
    async def load_many(
        cls,
        count: int,
        model: str,
        device: str,
        dtype: str | None,
        processes: bool = False,
        log: tuple[str, str] = ("warning", "kv"),
        threads: int | None = None,
        **config: Any,
    ) -> list[EngineDriver]:
        """`count` engines over one copy of the weights (each its own KV cache and thread), or
        with `processes` each in a child process of its own (each its own copy) that logs at
        `log` = (level, format). `threads`: each child's compute threads (None: torch's); engines
        in this process use torch's setting, which `EnginePool` sets."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if processes:
            spawned = await asyncio.gather(
                *(
                    EngineProcess.spawn(model, device, dtype, log, threads, **config)
                    for _ in range(count)
                ),
                return_exceptions=True,
            )
            failed = [e for e in spawned if isinstance(e, BaseException)]
            if failed:
                for engine in spawned:
                    if isinstance(engine, EngineProcess):
                        await engine.stop()
                raise failed[0]
            respawn = functools.partial(EngineProcess.spawn, model, device, dtype, log, threads,
                                        **config)  # fmt: skip
            return [
                cls(e, e.info.name, respawn) for e in spawned if isinstance(e, EngineProcess)
            ]
        from server.engine import AsyncLLMEngine, LLMEngine  # here: they import torch

        first = await asyncio.to_thread(
            LLMEngine.from_pretrained, model, device=device, dtype=dtype, **config
        )
        engines = [first]
        for _ in range(count - 1):
            engines.append(
                LLMEngine(
                    first.runner.model,
                    first.tokenizer,
                    first.model_config,
                    EngineConfig(**config),
                    device=first.device,
                    dtype=first.runner.dtype,
                    name=first.model_name,
                )
            )
        return [cls(AsyncLLMEngine(e), e.model_name) for e in engines]

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def threads(self) -> int:
        """Compute threads the engine runs."""
        return self.engine.threads

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV pool holds."""
        return self.engine.kv_tokens

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to this, less one."""
        return self.engine.vocab_size

    def encode(self, text: str) -> list[int]:
        """Tokens of `text` alone: no special tokens added (a prompt's are: `encode_prompt`)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokens of a prompt that starts with `text`: the tokenizer's leading special tokens
        (BOS), unless the text writes them, then the text's (`Tokenizer.encode_prompt`)."""
        return self.tokenizer.encode_prompt(text, add_special_tokens)

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on the tokens of `text`, known without tokenizing it
        (`Tokenizer.fewest_tokens`)."""
        return self.tokenizer.fewest_tokens(text)

    def new_context(self) -> TokenContext:
        return TokenContext(self.engine, self.engine.create_context(), [])

    async def generate_plain(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[JobOutput]:
        """A one-shot request on a fresh context (the engine's prefix cache applies, among
        requests of the same `cache_salt`)."""
        async with contextlib.aclosing(
            self.engine.generate_request(prompt, sampling, priority, cache_salt)
        ) as outputs:
            async for out in outputs:
                yield out

    async def generate_samples(
        self,
        prompt: Sequence[int],
        samplings: Sequence[SamplingParams],
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[tuple[int, JobOutput]]:
        """One generation per `samplings` entry from the same prompt, as (index, output) while
        they run. The prompt's KV is computed once, in a context each sample forks (sharing its
        blocks); each fork computes only the prompt's last token, whose logits it samples from.
        The forks are submitted together, so they decode in the same steps from the first.
        The prompt's context carries `cache_salt` (the forks keep it). Each output's
        `cached_tokens` is what the prompt's fill found in the prefix cache: the forks share
        what the request computed once for them all."""
        engine, tokens = self.engine, list(prompt)
        parent = engine.create_context(cache_salt=cache_salt)
        cached = 0
        try:
            if len(tokens) > 1:
                cached = await engine.fill(parent, tokens[:-1], priority)
            children = [engine.create_context(parent) for _ in samplings]
        finally:
            engine.free(parent)  # the forks keep the blocks they share
        streams = [
            engine.generate(child, sampling, priority, fill_token_ids=tokens[-1:])
            for child, sampling in zip(children, samplings, strict=True)
        ]
        try:
            # closed here, before the forks are freed: left to the garbage collector, the merge
            # would read on from streams whose contexts are gone
            merged = merge_streams(streams, started=self.together)
            async with contextlib.aclosing(merged):
                async for index, out in merged:
                    out.cached_tokens = cached
                    yield index, out
        finally:
            for child in children:
                engine.free(child)

    async def together(self) -> None:
        """Let the tasks set going just before run up to their first post, and hand what they
        post to the engine as one command: the step loop runs no step between two of those
        posts, so the work (a task group's calls, the forks of `n` samples) starts in one
        step. Posted one by one, a step could run between two posts under load."""
        self.engine.hold()
        try:
            await asyncio.sleep(0)
        finally:
            with contextlib.suppress(EngineError):  # a dead engine fails the work itself
                self.engine.release()

    async def stats(self) -> EngineStats:
        """A consistent copy of the engine's counters, read between its steps."""
        return await self.engine.stats()


class TokenContext:
    """An engine context and the tokens it holds, so text can be re-tokenized as a whole.

    The design's boundary rule: the model sees the tokens of the whole rendered text, never of a
    segment alone. `fill_to(tokens_of_everything_so_far)` keeps the common token prefix, drops
    the rest (boundary tokens that re-tokenize differently) and fills only the new suffix.
    """

    def __init__(self, engine: Engine, context_id: int, tokens: list[int]) -> None:
        self.engine = engine
        self.id = context_id
        self.tokens = tokens
        self.last_fill = FillResult(0, 0)  # of the last `generate(fill_to=...)`
        self._closed = False

    async def fill_to(
        self, target: Sequence[int], priority: int = 0, yield_tokens: int | None = None
    ) -> FillResult:
        result, new = self._rebase(target)
        if new:
            await self.engine.fill(self.id, new, priority, yield_tokens)
            self.tokens.extend(new)
        return result

    def boost(self, priority: int) -> None:
        """Its fills in flight run at `priority` at the latest (see `LLMEngine.boost`)."""
        self.engine.boost(self.id, priority)

    async def generate(
        self,
        sampling: SamplingParams,
        priority: int = 0,
        fill_to: Sequence[int] | None = None,
        hold_latency_s: float = 0.0,
    ) -> AsyncIterator[JobOutput]:
        """Sample onto the context. With `fill_to`, the context is first brought to those tokens
        (as `fill_to()` would) in the same engine pass that samples the first token.
        `hold_latency_s`: see `LLMEngine.add_generate`."""
        new: list[int] = []
        if fill_to is not None:
            self.last_fill, new = self._rebase(fill_to)
        self.tokens.extend(new)
        outputs = self.engine.generate(
            self.id, sampling, priority, fill_token_ids=new, hold_latency_s=hold_latency_s
        )
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                self.tokens.extend(out.new_token_ids)
                yield out

    def _rebase(self, target: Sequence[int]) -> tuple[FillResult, list[int]]:
        """Drop tokens that `target` does not start with; the tokens still to append."""
        kept = common_prefix_len(self.tokens, target)
        if kept < len(self.tokens):
            self.engine.truncate(self.id, kept)
            del self.tokens[kept:]
        new = list(target[kept:])
        return FillResult(kept, len(new)), new

    def fork(self) -> TokenContext:
        """A child sharing this context's KV blocks (copy-on-write)."""
        return TokenContext(self.engine, self.engine.create_context(self.id), list(self.tokens))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.free(self.id)
