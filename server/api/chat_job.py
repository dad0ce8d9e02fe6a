"""What a chat request asks of the engines, checked, and the assistant message each finished
choice makes: the one place the chat completions API and the Responses API share."""

from __future__ import annotations

import dataclasses

from server.api.openai_inputs import (
    UNSUPPORTED_CHAT_EXTENSIONS,
    chat_logprobs_asked,
    chat_prompt,
    encode_prompt,
    message_text,
    prompt_logprobs_asked,
    refuse_extensions,
    samples_of,
    sampling_of,
    truncated_prompt,
)
from server.api.openai_models import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionCall,
    ToolCall,
)
from server.api.plain_runs import finish_reason
from server.api.refused_fields import refuse_unhonoured
from server.api.tool_call_parser import ToolCallParser
from server.api.tool_request import ToolRequest
from server.engine import JobOutput, SamplingParams
from server.engine_driver import EngineDriver
from server.errors import bad_request


@dataclasses.dataclass(frozen=True, slots=True)
class ChatJob:
    """A checked chat request: its prompt's ids, one sampling per choice, its tools (None
    without), vLLM's echoed text, the top logprobs asked per generated token and per prompt
    token (None: not asked)."""

    ids: list[int]
    samplings: list[SamplingParams]
    tools: ToolRequest | None
    echoed: str
    logprobs: int | None
    scored: int | None


def chat_job(driver: EngineDriver, body: ChatCompletionRequest) -> ChatJob:
    """The request's prompt and samplings; a 400 naming the field for what cannot be honoured
    (the model and the fields common to every OpenAI route are the handler's to check)."""
    if body.functions or body.function_call not in (None, "none"):
        raise bad_request(
            "functions and function_call (deprecated by OpenAI) are not supported: use tools",
            param="functions",
        )
    tools = ToolRequest.of(body.tools, body.tool_choice, body.parallel_tool_calls)
    refuse_extensions(body, UNSUPPORTED_CHAT_EXTENSIONS)
    refuse_unhonoured(body.model_extra or {})
    text = chat_prompt(driver, body, tools)
    ids = truncated_prompt(
        driver, body, encode_prompt(
            driver, text, "messages", body.add_special_tokens,
            truncated=body.truncate_prompt_tokens is not None,
        )
    )
    echoed = chat_echo(body, tools)
    requested = body.max_completion_tokens or body.max_tokens
    max_tokens = requested or max(1, driver.max_model_len - len(ids))  # default: fill the context
    logprobs = chat_logprobs_asked(body)  # with tools too: every generated token's, calls' too
    scored = prompt_logprobs_asked(body)
    sampling = sampling_of(driver, body, ids, max_tokens, logprobs, scored)
    if tools is not None:
        if sampling.json_object or any(
            v is not None for v in (sampling.choices, sampling.regex, sampling.grammar)
        ):
            raise bad_request(
                "constrained output (a JSON response_format, structured_outputs or guided_*) "
                "does not go with tools",
                param="response_format",
            )
        _check_tool_sampling(tools, sampling)
        sampling = dataclasses.replace(
            sampling, stop=[*sampling.stop, *tools.stops()], json_object=tools.constrained,
            json_schema=tools.arguments_schema(), tagged_json=tools.call_tags(),
        )  # fmt: skip
    samplings = samples_of(sampling, body.n or 1)
    return ChatJob(ids, samplings, tools, echoed, logprobs, scored)


def _check_tool_sampling(tools: ToolRequest, sampling: SamplingParams) -> None:
    """400s for what a forced call's own constraint leaves no room for (the engine's checks
    of the combined sampling would be a 500). The tools' closing-tag stop has its own room
    past the stop strings' bound (SERVER_STOPS)."""
    if tools.required or tools.forced is not None:  # a forced call: constrained output
        for name, value in (("ignore_eos", sampling.ignore_eos),
                            ("min_tokens", sampling.min_tokens)):  # fmt: skip
            if value:
                raise bad_request(
                    f"a forced tool call (tool_choice) ends when it is complete: no {name}",
                    param=name,
                )


def answer(
    final: JobOutput, tools: ToolRequest | None, echoed: str = ""
) -> tuple[AssistantMessage, str]:
    """The assistant message of a finished choice (after the echoed text, if any) and its
    finish_reason."""
    parser = choice_parser(tools)
    if parser is None:
        return AssistantMessage(content=echoed + final.text), finish_reason(final)
    content, _ = parser.feed(final.text)
    rest, _ = parser.finish()
    calls = [
        ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
        for c in parser.calls
    ]
    if not calls:
        return AssistantMessage(content=content + rest), finish_reason(final)
    # the parser leaves out white space next to calls, as a stream of this answer does
    text = content + rest
    return AssistantMessage(content=text or None, tool_calls=calls), (
        finish_reason(final, called(tools))
    )


def called(tools: ToolRequest | None) -> bool:
    """Whether an answer with calls finishes as "tool_calls": not when the request named the
    function: OpenAI's API answers "stop" then, and vLLM follows it."""
    return tools is not None and not tools.named


def choice_parser(tools: ToolRequest | None) -> ToolCallParser | None:
    """A fresh parser for one choice, already past a forced call's primer."""
    if tools is None:
        return None
    return ToolCallParser(tools.names, tools.forced, tools.primer())


def chat_echo(body: ChatCompletionRequest, tools: ToolRequest | None) -> str:
    """vLLM's chat `echo`: the final message's content, when that message has the answer's
    role (the assistant's with a generation prompt; the final message's own without one)."""
    if not body.echo:
        return ""
    if tools is not None:
        raise bad_request("echo does not go with tools", param="echo")
    last = body.messages[-1]
    if body.add_generation_prompt and last.role != "assistant":
        return ""
    return message_text(last.content, len(body.messages) - 1)
