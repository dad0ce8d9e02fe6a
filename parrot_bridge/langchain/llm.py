"""`ParrotLLM`: a LangChain text-completion model served by Parrot's semantic calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, Field, field_validator, model_validator

from parrot_bridge.function import SemanticFunction
from parrot_bridge.langchain.awaiting import aget_all, get_all
from parrot_bridge.langchain.response_format import semantic_constraint
from parrot_bridge.langchain.settings import SAMPLING_OPTIONS, ParrotSettings
from parrot_bridge.request_fields import no_semantic_option, semantic_options
from parrot_bridge.session import Session
from parrot_bridge.template import escape_text
from parrot_bridge.variable import SemanticVariable

__all__ = ["ParrotLLM"]


class ParrotLLM(ParrotSettings, BaseLLM):
    """Complete prompts on a Parrot server. A batch (`batch`, `generate`) is one graph of
    independent semantic calls, submitted in one request, so the server sees it whole.

        llm = ParrotLLM(base_url="http://127.0.0.1:9000", temperature=0, max_tokens=64)
        llm.batch(["Paris is", "Rome is"])
    """

    # an unknown option (OpenAI's `n`, say) must fail, not be dropped (LangChain's base ignores it)
    model_config = ConfigDict(extra="forbid")
    ls_model_type: ClassVar[Literal["chat", "llm"]] = "llm"
    request_options: ClassVar[dict[str, str]] = {**SAMPLING_OPTIONS, "n": "n"}
    # langchain-openai's OpenAI LLM, which this class replaces, stops at 256 tokens: a swapped
    # app must not start generating to the context's end (ChatParrot keeps ChatOpenAI's None)
    max_tokens: int | None = Field(
        256, ge=1,
        description="256, as langchain-openai's OpenAI; None or -1: up to the context's end.",
    )
    criteria: Literal["latency", "throughput"] = "latency"
    streaming: bool = Field(False, description="invoke streams: tokens reach the callbacks.")
    n: int | None = Field(
        None, ge=1, le=128, description="Completions per prompt: calls sharing its prefix."
    )

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _as_many_as_possible(cls, value: Any) -> Any:
        # langchain-openai's OpenAI reads -1 as "as many as the context allows": so does this
        return None if value == -1 and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check_extra_body(self) -> ParrotLLM:
        self._semantic_extras({})  # a field no semantic call takes fails here, not per call
        return self

    @property
    def _llm_type(self) -> str:
        return "parrot"

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:
            chunks = self._stream(_one_prompt(prompts), stop, run_manager, **kwargs)
            return _streamed_result(list(chunks), self._server_info(self._requested(kwargs)))
        served = self._server_info(self._requested(kwargs))
        with self._session() as session:
            sampling = self._call_sampling(stop, kwargs, served)
            outputs = self._record(session, prompts, sampling, self._samples(kwargs))
            get_all(session, [o for each in outputs for o in each], self.criteria, self.timeout)
        return _result(outputs, served[0])

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:
            chunks = self._astream(_one_prompt(prompts), stop, run_manager, **kwargs)
            served = await self._aserver_info(self._requested(kwargs))
            return _streamed_result([c async for c in chunks], served)
        served = await self._aserver_info(self._requested(kwargs))
        async with self._session() as session:
            sampling = self._call_sampling(stop, kwargs, served)
            outputs = self._record(session, prompts, sampling, self._samples(kwargs))
            everything = [o for each in outputs for o in each]
            await aget_all(session, everything, self.criteria, self.timeout)
        return _result(outputs, served[0])

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        served = self._server_info(self._requested(kwargs))
        with self._session() as session:
            sampling = self._call_sampling(stop, kwargs, served)
            [(output,)] = self._record(session, [prompt], sampling, _one_sample(self, kwargs))
            for text in output.stream(self.criteria):
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            yield _last_chunk(output)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        served = await self._aserver_info(self._requested(kwargs))
        async with self._session() as session:
            sampling = self._call_sampling(stop, kwargs, served)
            [(output,)] = self._record(session, [prompt], sampling, _one_sample(self, kwargs))
            async for text in output.astream(self.criteria):
                chunk = GenerationChunk(text=text)
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            yield _last_chunk(output)

    # -- helpers -------------------------------------------------------------------------------

    def _session(self) -> Session:
        return Session(
            self.base_url, name="langchain-llm", timeout=self.timeout,
            max_retries=self.max_retries, api_key=self._key(),
        )  # fmt: skip

    def _requested(self, kwargs: dict[str, Any]) -> str | None:
        """The model asked for (None: the served one). Semantic calls name no model, so it is
        checked with the server up front: an unserved one fails, as OpenAI's 404 does."""
        return kwargs.get("model") or self.model_name

    def _call_sampling(
        self, stop: list[str] | None, kwargs: dict[str, Any], served: tuple[str, int] | None = None
    ) -> dict[str, Any]:
        """The sampling of a semantic call (a response_format as its constraint); `served`:
        `_server_info`'s answer, when already asked."""
        sampling = self._sampling(stop, kwargs)
        sampling.pop("n", None)  # one call's: `_record` makes the n calls
        model = self._requested(kwargs)
        if served is None and (model is not None or "max_tokens" not in sampling):
            served = self._server_info(model)  # (asks the server once)
        # the server stops at the context's end, as /v1/completions does without max_tokens
        if "max_tokens" not in sampling:
            assert served is not None
            sampling["max_tokens"] = served[1]
        return {**semantic_constraint(sampling), **self._semantic_extras(kwargs)}

    def _semantic_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's extra_body as semantic sampling options; a field that none is raises."""
        extras, left = semantic_options("ParrotLLM", "extra_body", self._extra_body(kwargs))
        if left:
            raise no_semantic_option("ParrotLLM", "extra_body", left)
        return extras

    def _samples(self, kwargs: dict[str, Any]) -> int:
        """`n`: completions per prompt (per call, model_kwargs, the field; 1 by default)."""
        return self._sampling(None, kwargs).get("n", 1)

    def _record(
        self, session: Session, prompts: list[str], sampling: dict[str, Any], n: int = 1
    ) -> list[list[SemanticVariable]]:
        """`n` calls per prompt in `session`: one graph, whose calls of a prompt share its
        prefix on the server (computed once). With a seed, sample i draws from seed + i, as
        the server's `n` does, so they differ and each is reproducible."""
        outputs = []
        for prompt in prompts:
            samples = []
            for i in range(n):
                seeded = sampling
                if i and sampling.get("seed") is not None:
                    seeded = {**sampling, "seed": _offset_seed(sampling["seed"], i)}
                fn = SemanticFunction(prompt_template(prompt), name="ParrotLLM", **seeded)
                samples.append(fn.invoke(session))
            outputs.append(samples)
        return outputs


def prompt_template(prompt: str) -> str:
    """A completion of `prompt` as a template: the prompt's text is constant."""
    return escape_text(prompt) + "{{output:completion}}"


def _one_prompt(prompts: list[str]) -> str:
    # LangChain gives _generate one run's callbacks for the whole batch: tokens of several
    # prompts would all reach the first (langchain-openai's OpenAI LLM refuses them too)
    if len(prompts) > 1:
        raise ValueError(
            "ParrotLLM cannot stream results with multiple prompts (streaming=True): stream "
            "one prompt at a time, or batch without streaming (one graph)"
        )
    return prompts[0]


def _last_chunk(output: SemanticVariable) -> GenerationChunk:
    """The empty chunk that ends a stream with its finish reason (as an OpenAI stream's last
    chunk has it); its usage rides along for `_streamed_result`."""
    info = {"finish_reason": output.finish_reason, "usage": output.usage}
    return GenerationChunk(text="", generation_info=info)


def _streamed_result(chunks: list[GenerationChunk], served: tuple[str, int]) -> LLMResult:
    text = "".join(c.text for c in chunks)
    last = (chunks[-1].generation_info or {}) if chunks else {}
    generation = Generation(text=text, generation_info={"finish_reason": last.get("finish_reason")})
    usage = {k: v for k, v in (last.get("usage") or {}).items() if k in _USAGE_KEYS}
    llm_output = {"token_usage": usage, "model_name": served[0]}
    return LLMResult(generations=[[generation]], llm_output=llm_output)


_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _one_sample(llm: ParrotLLM, kwargs: dict[str, Any]) -> int:
    if llm._samples(kwargs) > 1:
        raise ValueError("ParrotLLM cannot stream results when n > 1 (one sample streams)")
    return 1


def _offset_seed(seed: int, offset: int) -> int:
    """`seed + offset` wrapped into the server's signed 64-bit seeds, as its `n` samples use."""
    return (seed + offset + 2**63) % 2**64 - 2**63


def _result(outputs: list[list[SemanticVariable]], model: str) -> LLMResult:
    """As an OpenAI LLM reports a batch: per prompt its samples' texts with their finish
    reasons; usage summed, each prompt counted once however many samples it had."""
    generations = [
        [Generation(text=o.value or "", generation_info={"finish_reason": o.finish_reason})
         for o in samples]
        for samples in outputs
    ]  # fmt: skip

    def total(key: str, first_only: bool) -> int:
        return sum((o.usage or {}).get(key, 0)
                   for samples in outputs for o in (samples[:1] if first_only else samples))  # fmt: skip

    prompt, completion = total("prompt_tokens", True), total("completion_tokens", False)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}  # fmt: skip
    return LLMResult(generations=generations,
                     llm_output={"token_usage": usage, "model_name": model})  # fmt: skip
