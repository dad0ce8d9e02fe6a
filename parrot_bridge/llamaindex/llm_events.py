"""LlamaIndex's callback and instrumentation events for `Parrot`'s semantic calls.

The stock `LLM.predict` dispatches `LLMPredictStartEvent`, a TEMPLATING callback event, then
calls `complete`, whose `llm_completion_callback` dispatches `LLMCompletionStartEvent`, an LLM
callback event pair (prompt, then prompt and completion: what `TokenCountingHandler` counts)
and `LLMCompletionEndEvent`; then `LLMPredictEndEvent`. `Parrot` sends the prompt as a semantic
call rather than through `complete`, so it dispatches the same sequence here, through the same
decorator, around reading the call's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
)
from llama_index.core.instrumentation.events.llm import LLMPredictEndEvent, LLMPredictStartEvent
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.llm import (
    LLM,
    astream_completion_response_to_tokens,
    stream_completion_response_to_tokens,
)
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen

from parrot_bridge.llamaindex.token_counts import token_counts
from parrot_bridge.variable import SemanticVariable

__all__ = ["apredicted", "astreamed", "predicted", "streamed"]

dispatcher = instrument.get_dispatcher(__name__)


def predicted(
    llm: LLM,
    prompt: BasePromptTemplate,
    args: dict[str, Any],
    read: Callable[[], str],
    output: SemanticVariable | None = None,
) -> str:
    """`read()`'s answer to `prompt` formatted with `args`, parsed as `LLM.predict` parses it,
    with the events `LLM.predict` dispatches; the server's token usage of `output` (the
    variable read), when known, goes in the response's `raw` as an OpenAI LLM's does."""
    dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=args))
    llm._log_template_data(prompt, **args)
    response = _completion(llm, llm._get_prompt(prompt, **args), read, output, formatted=True)
    output = llm._parse_output(response.text)
    dispatcher.event(LLMPredictEndEvent(output=output))
    return output


async def apredicted(
    llm: LLM,
    prompt: BasePromptTemplate,
    args: dict[str, Any],
    read: Callable[[], Awaitable[str]],
    output: SemanticVariable | None = None,
) -> str:
    """The async `predicted`."""
    dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=args))
    llm._log_template_data(prompt, **args)
    formatted = llm._get_prompt(prompt, **args)
    response = await _acompletion(llm, formatted, read, output, formatted=True)
    output = llm._parse_output(response.text)
    dispatcher.event(LLMPredictEndEvent(output=output))
    return output


def streamed(
    llm: LLM, prompt: BasePromptTemplate, args: dict[str, Any], chunks: Iterator[str]
) -> TokenGen:
    """`chunks` of the answer as `LLM.stream` returns tokens, with the events it dispatches
    (the completion's end once the last chunk is read)."""
    llm._log_template_data(prompt, **args)
    dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=args))
    responses = _stream_completion(llm, llm._get_prompt(prompt, **args), chunks, formatted=True)
    return stream_completion_response_to_tokens(responses)


async def astreamed(
    llm: LLM, prompt: BasePromptTemplate, args: dict[str, Any], chunks: AsyncIterator[str]
) -> TokenAsyncGen:
    """The async `streamed`."""
    llm._log_template_data(prompt, **args)
    dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=args))
    formatted = llm._get_prompt(prompt, **args)
    responses = await _astream_completion(llm, formatted, chunks, formatted=True)
    return await astream_completion_response_to_tokens(responses)


# The decorator reads the prompt from the first argument after the LLM and reports the keyword
# arguments as the call's additional kwargs: `formatted=True`, as `LLM.predict` passes it.


@llm_completion_callback()
def _completion(
    llm: LLM,
    prompt: str,
    read: Callable[[], str],
    output: SemanticVariable | None,
    formatted: bool = False,
) -> CompletionResponse:
    return _response(read(), output)


@llm_completion_callback()
async def _acompletion(
    llm: LLM,
    prompt: str,
    read: Callable[[], Awaitable[str]],
    output: SemanticVariable | None,
    formatted: bool = False,
) -> CompletionResponse:
    return _response(await read(), output)


def _response(text: str, output: SemanticVariable | None) -> CompletionResponse:
    usage = None if output is None else output.usage
    raw = None if usage is None else {"usage": usage}
    return CompletionResponse(text=text, raw=raw, additional_kwargs=token_counts(raw))


@llm_completion_callback()
def _stream_completion(
    llm: LLM, prompt: str, chunks: Iterator[str], formatted: bool = False
) -> CompletionResponseGen:
    def responses() -> CompletionResponseGen:
        text = ""
        for delta in chunks:
            text += delta
            yield CompletionResponse(text=text, delta=delta)

    return responses()


@llm_completion_callback()
async def _astream_completion(
    llm: LLM, prompt: str, chunks: AsyncIterator[str], formatted: bool = False
) -> CompletionResponseAsyncGen:
    async def responses() -> CompletionResponseAsyncGen:
        text = ""
        async for delta in chunks:
            text += delta
            yield CompletionResponse(text=text, delta=delta)

    return responses()
