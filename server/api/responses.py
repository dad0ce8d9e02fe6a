"""OpenAI's Responses API: `POST /v1/responses` answers as a chat completion would (the same
template, tools, constrained formats and engines) and can be streamed as its typed events;
stored responses can be retrieved, deleted, and followed (`previous_response_id`), their
conversation coming before the new input, where the engines' prefix cache finds it computed."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from aiohttp import web

from server.api.chat_job import ChatJob, chat_job, choice_parser
from server.api.constraint_compile import compile_constraints
from server.api.disconnect import unless_disconnected
from server.api.logprobs import HeldLogprobs, chat_logprobs
from server.api.openai import check_model
from server.api.openai_inputs import placement_of
from server.api.openai_models import ChatCompletionRequest, ChatTokenLogprob
from server.api.plain_runs import require_engine, run_plain, stream_outputs
from server.api.request_timing import RequestTiming
from server.api.response_output import ResponseOutput, new_id
from server.api.responses_input import chat_request_of, input_items, responses_error
from server.api.responses_models import (
    DeletedResponse,
    IncompleteDetails,
    InputItemList,
    InputItemsQuery,
    InputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseStreamEvent,
    ResponseUsage,
)
from server.api.route import (
    Route,
    json_response,
    parse_body,
    parse_query,
    prepare,
    validate,
)
from server.api.sse import EventStream
from server.api.tool_call_parser import ToolCallParser
from server.engine import JobOutput
from server.errors import ApiError, bad_request, not_found
from server.keys import DRIVER, ENGINES, METRICS, RESPONSES
from server.response_store import StoredResponse


def responses_routes() -> list[Route]:
    tag = "responses"
    one = "/v1/responses/{response_id}"
    return [
        Route("POST", "/v1/responses", create_response,
              "OpenAI's Responses API: answer the input (stream=true sends typed events)", tag,
              body=ResponsesRequest, response=ResponseObject, events=ResponseStreamEvent),
        Route("GET", one, retrieve_response, "A stored response", tag, response=ResponseObject),
        Route("DELETE", one, delete_response, "Forget a stored response", tag,
              response=DeletedResponse),
        Route("GET", one + "/input_items", list_input_items,
              "A stored response's input items, newest first unless order=asc", tag,
              query=InputItemsQuery, response=InputItemList),
    ]  # fmt: skip


async def create_response(request: web.Request) -> web.StreamResponse:
    timing = RequestTiming(request.app[METRICS], "responses", time.perf_counter())
    body = await parse_body(request, ResponsesRequest)
    check_model(request, body.model)
    history = _followed(request, body.previous_response_id)
    try:
        fields, chat = await prepare(request, lambda: _chat_of(body, history))
        await compile_constraints(chat)
        job = await prepare(request, lambda: chat_job(request.app[DRIVER], chat))
    except ApiError as exc:
        raise responses_error(exc) from exc
    require_engine(request)
    request.app[METRICS].prompt_tokens.inc(len(job.ids))
    draft = _Draft(body, new_id("resp"), int(time.time()), fields["messages"])
    if body.stream:
        return await _stream_response(request, draft, job, chat, timing)
    done = await unless_disconnected(
        request, run_plain(request.app[ENGINES], job.ids, job.samplings, timing,
                           placement_of(chat))  # fmt: skip
    )
    final, entries = done[0]
    output = ResponseOutput(logprobs=job.logprobs is not None)
    logprobs = _logprobs(request, entries) if job.logprobs is not None else []
    written(output, choice_parser(job.tools), final.text, logprobs, final)
    cut = final.finish_reason == "length"
    output.finish(incomplete=cut)
    response = draft.response(output, "incomplete" if cut else "completed", job, final)
    _store(request, draft, response)
    return json_response(response)


async def retrieve_response(request: web.Request) -> web.Response:
    return json_response(_stored(request, request.match_info["response_id"]).response)


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    _stored(request, response_id)
    request.app[RESPONSES].delete(response_id)
    return json_response(DeletedResponse(id=response_id))


async def list_input_items(request: web.Request) -> web.Response:
    query = parse_query(request, InputItemsQuery)
    items = _stored(request, request.match_info["response_id"]).input_items
    ordered = items if query.order == "asc" else items[::-1]
    start = 0
    if query.after is not None:
        ids = [item["id"] for item in ordered]
        if query.after not in ids:
            raise bad_request(f"after: no input item {query.after!r} in this response",
                              param="after")  # fmt: skip
        start = ids.index(query.after) + 1
    page = ordered[start : start + query.limit]
    return json_response(InputItemList(
        data=page, first_id=page[0]["id"] if page else None,
        last_id=page[-1]["id"] if page else None, has_more=start + query.limit < len(ordered),
    ))  # fmt: skip


class _Draft:
    """What a response says besides its output: the request's settings, echoed back."""

    def __init__(
        self, body: ResponsesRequest, rid: str, created: int, messages: list[dict[str, Any]]
    ) -> None:
        self.body, self.id, self.created = body, rid, created
        # the conversation it answers, without the instructions (not carried to a follower)
        self.conversation = messages[1:] if body.instructions else list(messages)

    def response(
        self,
        output: ResponseOutput,
        status: str,
        job: ChatJob | None = None,
        final: JobOutput | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        body = self.body
        usage = None
        if job is not None and final is not None:
            n, cached = len(final.token_ids), final.cached_tokens or 0
            usage = ResponseUsage(
                input_tokens=len(job.ids), output_tokens=n, total_tokens=len(job.ids) + n,
                input_tokens_details=InputTokensDetails(
                    cached_tokens=cached, cache_write_tokens=len(job.ids) - cached),
            )  # fmt: skip
        return ResponseObject(
            id=self.id, created_at=self.created, status=status,  # type: ignore[arg-type]
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete" else None,
            instructions=body.instructions, max_output_tokens=body.max_output_tokens,
            model=body.model, output=list(output.items),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            reasoning=body.reasoning, store=body.store,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_logprobs=body.top_logprobs,
            text={"format": (body.text or {}).get("format") or {"type": "text"}},
            tool_choice=body.tool_choice or "auto", tools=body.tools or [],
            truncation=body.truncation or "disabled", usage=usage, user=body.user,
            metadata=body.metadata or {},
        )  # fmt: skip


def _chat_of(
    body: ResponsesRequest, history: list[dict[str, Any]]
) -> tuple[dict[str, Any], ChatCompletionRequest]:
    """The chat request's fields that answer `body` after `history`, and the request."""
    fields = chat_request_of(body, history)
    return fields, validate(ChatCompletionRequest, fields, "body")


def _followed(request: web.Request, response_id: str | None) -> list[dict[str, Any]]:
    """The conversation of the response this one follows (none: empty)."""
    if response_id is None:
        return []
    stored = request.app[RESPONSES].get(response_id)
    if stored is None:
        raise bad_request(
            f"previous response with id {response_id!r} not found (not stored, deleted, or "
            "evicted: the server keeps the most recent ones)",
            param="previous_response_id",
        )
    return [dict(m) for m in stored.messages]


def _stored(request: web.Request, response_id: str) -> StoredResponse:
    stored = request.app[RESPONSES].get(response_id)
    if stored is None:
        raise not_found(f"response with id {response_id!r} not found")
    return stored


def _store(request: web.Request, draft: _Draft, response: ResponseObject) -> None:
    """Keep a finished response (when asked) with its conversation, so it can be followed."""
    if not draft.body.store or response.status == "failed":
        return
    said: dict[str, Any] = {"role": "assistant", "content": None}
    for item in response.output:
        if item.type == "message":
            said["content"] = (said["content"] or "") + item.content[0].text
        else:
            said.setdefault("tool_calls", []).append({
                "id": item.call_id, "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            })  # fmt: skip
    stored = StoredResponse(response, [*draft.conversation, said], input_items(draft.body.input))
    request.app[RESPONSES].put(stored)


def written(
    output: ResponseOutput,
    parser: ToolCallParser | None,
    text: str,
    logprobs: list[ChatTokenLogprob],
    final: JobOutput | None,
) -> list[dict[str, Any]]:
    """The events of the model's next `text` (`final`: its end) into `output`: with tools it
    goes through the parser, text as it comes and each call whole once its block closes, in
    the order the model wrote them (so a stream's chunks, whatever their size, make the
    items of the whole answer); a call that the end of an answer cut short
    (max_output_tokens) is incomplete."""
    if parser is None:
        return output.text(text, logprobs)
    pieces = parser.read(text)
    rest = parser.read_rest() if final is not None else []
    events: list[dict[str, Any]] = []
    if logprobs and not any(isinstance(p, str) for p in pieces + rest):
        events += output.text("", logprobs)  # held back: they wait with the open text
        logprobs = []
    for piece in pieces + rest:
        if isinstance(piece, str):
            # the chunk's logprobs (its tokens', calls' too) go with its first text
            events += output.text(piece, logprobs)
            logprobs = []
        else:
            cut = final is not None and final.finish_reason == "length" and piece in rest
            events += output.call(piece.id, piece.name, piece.arguments, cut=cut)
    return events


def _logprobs(request: web.Request, entries: list[Any]) -> list[ChatTokenLogprob]:
    return chat_logprobs(request.app[DRIVER].tokenizer, entries).content


async def _stream_response(
    request: web.Request,
    draft: _Draft,
    job: ChatJob,
    chat: ChatCompletionRequest,
    timing: RequestTiming,
) -> web.StreamResponse:
    """The typed events of OpenAI's streamed responses. With tools the text goes through a
    `ToolCallParser` as a streamed chat completion's does: text as it comes, each call whole
    once its block closes. Logprobs go with the text deltas that carry their tokens."""
    tokenizer = request.app[DRIVER].tokenizer
    asked = job.logprobs is not None
    output = ResponseOutput(logprobs=asked)
    parser = choice_parser(job.tools)
    held = HeldLogprobs(tokenizer, job.samplings[0].skip_special_tokens)
    stream = EventStream(request)

    async def send(events: list[dict[str, Any]]) -> None:
        for event in events:
            await stream.send(event, event=event["type"])

    await stream.open()
    with contextlib.suppress(ConnectionError):
        await send(output.started(draft.response(output, "in_progress")))
        final: JobOutput | None = None

        async def failed(message: str, kind: str, code: str | None) -> None:
            # the response's error takes one of OpenAI's codes; the error event, whose code is
            # free, keeps the failure's own (server_shutting_down) when it has one
            known = "invalid_prompt" if kind == "invalid_request_error" else "server_error"
            await send([output.error(message, code or known)])
            error = ResponseError(code=known, message=message)
            await send([output.ended(draft.response(output, "failed", error=error))])

        outputs = stream_outputs(stream, request.app[ENGINES], [job.ids], [job.samplings],
                                 timing, placement_of(chat), failed=failed)  # fmt: skip
        async for _, out in outputs:
            held.add(out.new_logprobs)
            released = held.release(out.new_text, out.finished)  # the text's, sent with it
            entries = chat_logprobs(tokenizer, [e for e, _ in released]).content if asked else []
            await send(written(output, parser, out.new_text, entries,
                                out if out.finished else None))  # fmt: skip
            if out.finished:
                final = out
        if final is not None:
            cut = final.finish_reason == "length"
            await send(output.finish(incomplete=cut))
            response = draft.response(output, "incomplete" if cut else "completed", job, final)
            _store(request, draft, response)
            await send([output.ended(response)])
        await stream.close()
    return stream.response
