"""`ParrotLLM`: a LangChain text-completion model served by Parrot's semantic calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from parrot_bridge.function import SemanticFunction
from parrot_bridge.langchain.awaiting import aget_all, get_all
from parrot_bridge.langchain.settings import ParrotSettings
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
    criteria: Literal["latency", "throughput"] = "latency"

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
        with self._session() as session:
            outputs = self._record(session, prompts, stop, kwargs)
            get_all(session, outputs, self.criteria)
        return _result(outputs, self._model_id(kwargs))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        async with self._session() as session:
            outputs = self._record(session, prompts, stop, kwargs)
            await aget_all(session, outputs, self.criteria)
        return _result(outputs, self._model_id(kwargs))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        with self._session() as session:
            (output,) = self._record(session, [prompt], stop, kwargs)
            for text in output.stream(self.criteria):
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async with self._session() as session:
            (output,) = self._record(session, [prompt], stop, kwargs)
            async for text in output.astream(self.criteria):
                chunk = GenerationChunk(text=text)
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk

    # -- helpers -------------------------------------------------------------------------------

    def _session(self) -> Session:
        return Session(self.base_url, name="langchain-llm", timeout=self.timeout)

    def _call_sampling(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        sampling = self._sampling(stop, kwargs)
        # the server stops at the context's end, as /v1/completions does without max_tokens
        if "max_tokens" not in sampling:  # (asks the server once)
            sampling["max_tokens"] = self._server_info()[1]
        return sampling

    def _record(
        self, session: Session, prompts: list[str], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[SemanticVariable]:
        sampling = self._call_sampling(stop, kwargs)
        outputs = []
        for prompt in prompts:
            fn = SemanticFunction(prompt_template(prompt), name="ParrotLLM", **sampling)
            outputs.append(fn.invoke(session))
        return outputs


def prompt_template(prompt: str) -> str:
    """A completion of `prompt` as a template: the prompt's text is constant."""
    return escape_text(prompt) + "{{output:completion}}"


def _result(outputs: list[SemanticVariable], model: str) -> LLMResult:
    """As an OpenAI LLM reports a batch: texts with their finish reasons, usage summed."""
    generations = [
        [Generation(text=o.value or "", generation_info={"finish_reason": o.finish_reason})]
        for o in outputs
    ]
    usage = {key: sum((o.usage or {}).get(key, 0) for o in outputs)
             for key in ("prompt_tokens", "completion_tokens", "total_tokens")}  # fmt: skip
    return LLMResult(generations=generations,
                     llm_output={"token_usage": usage, "model_name": model})  # fmt: skip
