"""A request's output constraints compiled in a worker thread before its checks run.

A regular expression or grammar near its size cap takes ~0.4-1.5 s to compile (pure Python).
On the event loop that would stall every stream and probe for as long; in a thread the loop
keeps its share of the interpreter (the GIL changes hands every few milliseconds). The checks
that follow on the loop find the patterns in their caches, and a constraint that fails to
compile fails here, with the 400 those checks would give.
"""

from __future__ import annotations

import asyncio

from server.api.openai_inputs import guided_output
from server.api.openai_models import ChatCompletionRequest, OpenAIRequest
from server.api.tool_request import ToolRequest
from server.errors import ApiError

_GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_grammar", "structured_outputs")


async def compile_constraints(body: OpenAIRequest) -> None:
    """Compile what `body` constrains its output to (its response_format, vLLM's structured
    outputs, its tools' parameter schemas) off the event loop; a request without any costs
    nothing."""
    extra = body.model_extra or {}
    tools = isinstance(body, ChatCompletionRequest) and bool(body.tools)
    if not (body.response_format or tools or any(extra.get(f) for f in _GUIDED_FIELDS)):
        return
    await asyncio.to_thread(_compile, body)


def _compile(body: OpenAIRequest) -> None:
    guided_output(body)  # its ApiError is the request's 400
    if isinstance(body, ChatCompletionRequest):
        try:  # a name or shape error is the checks'
            tools = ToolRequest.of(body.tools, body.tool_choice, body.parallel_tool_calls)
        except ApiError:
            return
        if tools is not None:  # the parameters' schemas a forced call's arguments follow
            tools.arguments_schema()
            tools.call_tags()
