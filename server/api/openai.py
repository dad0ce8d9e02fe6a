"""The OpenAI-compatible API: plain requests, no graph, but the engine's prefix cache applies."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid

from aiohttp import web

from server.api.chat_job import ChatJob, answer, called, chat_job, choice_parser
from server.api.constraint_compile import compile_constraints
from server.api.disconnect import unless_disconnected
from server.api.logprobs import (
    HeldLogprobs,
    chat_logprobs,
    completion_logprobs,
    joined,
    prompt_logprobs,
)
from server.api.openai_inputs import (
    UNSUPPORTED_EXTENSIONS,
    completion_logprobs_asked,
    completion_prompts,
    placement_of,
    prompt_logprobs_asked,
    prompt_text,
    refuse_extensions,
    samples_of,
    sampling_of,
    truncated_prompt,
)
from server.api.openai_models import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    FunctionCall,
    ModelCard,
    ModelList,
    OpenAIRequest,
    PromptTokensDetails,
    ToolCallDelta,
    Usage,
)
from server.api.plain_runs import (
    finish_reason,
    require_engine,
    run_plain,
    stop_reason,
    stream_outputs,
)
from server.api.request_timing import RequestTiming
from server.api.route import Route, json_response, parse_body, prepare
from server.api.running_usage import RunningUsage
from server.api.sse import EventStream
from server.engine import JobOutput, SamplingParams, TokenLogprob
from server.engine_driver import EngineDriver
from server.errors import bad_request, not_found
from server.keys import CONFIG, DRIVER, ENGINES, METRICS

_DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions

def openai_routes() -> list[Route]:
    tag = "openai"
    return [
        Route("GET", "/v1/models", list_models, "The served model", tag, response=ModelList),
        Route("GET", "/v1/models/{model}", retrieve_model, "The served model, by its id", tag,
              response=ModelCard),
        Route("POST", "/v1/completions", create_completion,
              "Complete a prompt; stream=true sends chunks (each a completion of the new text)",
              tag, body=CompletionRequest, response=Completion, events=Completion),
        Route("POST", "/v1/chat/completions", create_chat_completion,
              "Chat completion (the model's chat template); stream=true sends chunks", tag,
              body=ChatCompletionRequest, response=ChatCompletion, events=ChatCompletionChunk),
    ]  # fmt: skip


async def list_models(request: web.Request) -> web.Response:
    return json_response(ModelList(data=[_model_card(request)]))


async def retrieve_model(request: web.Request) -> web.Response:
    """OpenAI's `GET /v1/models/{model}` (the client's `models.retrieve`)."""
    check_model(request, request.match_info["model"])
    return json_response(_model_card(request))


def _model_card(request: web.Request) -> ModelCard:
    return ModelCard(
        id=request.app[CONFIG].model_id,
        created=int(time.time()),
        max_model_len=request.app[DRIVER].max_model_len,
    )


async def create_completion(request: web.Request) -> web.StreamResponse:
    timing = RequestTiming(request.app[METRICS], "completions", time.perf_counter())
    body = await parse_body(request, CompletionRequest)
    _check_common(request, body)
    await compile_constraints(body)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise bad_request("best_of is not supported (only equal to n)", param="best_of")
    driver = request.app[DRIVER]
    prompts, prompt_ids = await prepare(request, lambda: _completion_prompts(driver, body))
    n = body.n or 1
    logprobs = completion_logprobs_asked(body)
    echo = _Echo.of(body, n, logprobs)
    max_tokens = echo.max_tokens(body)
    scored = prompt_logprobs_asked(body)
    # the engine scores the prompt once for both an echo's logprobs and vLLM's prompt_logprobs
    prompt_top = max((k for k in (logprobs if echo.scored else None, scored) if k is not None),
                     default=None)  # fmt: skip
    samplings = [
        samples_of(sampling_of(driver, body, ids, max_tokens, logprobs, prompt_top), n)
        for ids in prompt_ids
    ]
    cid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    require_engine(request)
    for ids in prompt_ids:
        request.app[METRICS].prompt_tokens.inc(len(ids))
    if body.stream:
        return await _stream_completion(
            request, driver, prompts, prompt_ids, samplings, cid, body, echo, timing
        )
    per_prompt = await unless_disconnected(request, asyncio.gather(
        *(run_plain(request.app[ENGINES], ids, s, timing, placement_of(body))
          for ids, s in zip(prompt_ids, samplings, strict=True))
    ))  # fmt: skip
    choices: list[CompletionChoice] = []
    skip = samplings[0][0].skip_special_tokens
    as_ids, with_ids = body.return_tokens_as_token_ids, body.return_token_ids
    for k, outs in enumerate(per_prompt):  # OpenAI's order: by prompt, then sample
        for f, lps in outs:
            text, echoed, generated = echo.choice(prompts[k], f, lps, logprobs)
            choices.append(CompletionChoice(
                index=len(choices), text=text, finish_reason=echo.reason(f),
                stop_reason=None if echo.hides_generation else stop_reason(f, body),
                logprobs=None if logprobs is None else joined(
                    # an echoed prompt keeps its special tokens' text (see prompt_text)
                    completion_logprobs(driver.tokenizer, echoed, first_token_id=prompt_ids[k][0],
                                        skip_special_tokens=False, as_ids=as_ids),
                    completion_logprobs(driver.tokenizer, generated,
                                        len(prompts[k]) if echo.on else 0,
                                        skip_special_tokens=skip, as_ids=as_ids),
                ),
                prompt_logprobs=None if scored is None else prompt_logprobs(
                    driver.tokenizer, f.prompt_logprobs or [], scored),
                prompt_token_ids=list(prompt_ids[k]) if with_ids else None,
                token_ids=echo.generated_ids(f) if with_ids else None,
            ))  # fmt: skip
    usage = _usage([t for ids in prompt_ids for t in ids], [f for outs in per_prompt
                   for f, _ in outs], n, not echo.hides_generation)  # fmt: skip
    return json_response(
        Completion(id=cid, created=created, model=model, choices=choices, usage=usage)
    )


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    timing = RequestTiming(request.app[METRICS], "chat", time.perf_counter())
    body = await parse_body(request, ChatCompletionRequest)
    _check_common(request, body)
    await compile_constraints(body)
    driver = request.app[DRIVER]
    job = await prepare(request, lambda: chat_job(driver, body))
    ids, samplings, tools, logprobs = job.ids, job.samplings, job.tools, job.logprobs
    require_engine(request)
    request.app[METRICS].prompt_tokens.inc(len(ids))
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    if body.stream:
        return await _stream_chat(request, driver, job, cid, body, timing)
    done = await unless_disconnected(
        request,
        run_plain(request.app[ENGINES], ids, samplings, timing, placement_of(body)),
    )
    finals = [f for f, _ in done]
    as_ids, with_ids = body.return_tokens_as_token_ids, body.return_token_ids
    choices = [
        ChatChoice(
            index=i, message=message, finish_reason=reason, stop_reason=stop_reason(f, body),
            logprobs=None if logprobs is None else chat_logprobs(driver.tokenizer, lps, as_ids),
            token_ids=list(f.token_ids) if with_ids else None,
        )
        for i, (f, lps) in enumerate(done)
        for message, reason in [answer(f, tools, job.echoed)]
    ]  # fmt: skip
    return json_response(
        ChatCompletion(id=cid, created=created, model=model, choices=choices,
                       usage=_usage(ids, finals, len(finals)),
                       prompt_logprobs=None if job.scored is None else prompt_logprobs(
                           driver.tokenizer, finals[0].prompt_logprobs or [], job.scored),
                       prompt_token_ids=list(ids) if with_ids else None)
    )  # fmt: skip


# -- streaming -----------------------------------------------------------------------------------


async def _stream_chat(
    request: web.Request,
    driver: EngineDriver,
    job: ChatJob,
    cid: str,
    body: ChatCompletionRequest,
    timing: RequestTiming,
) -> web.StreamResponse:
    """With tools, each choice's text goes through its own `ToolCallParser`: content as it
    comes (a possible `<tool_call>` held back), each call whole once its block closes. An
    `echo`ed message comes first, in a chunk of its own (it has no logprobs). With vLLM's
    `return_token_ids` the role chunks carry the prompt's ids and every later chunk of a choice
    the ids generated since its previous one (ids whose text is held back wait with it)."""
    created = int(time.time())
    ids, samplings, tools, echoed = job.ids, job.samplings, job.tools, job.echoed
    asked = samplings[0].logprobs is not None
    as_ids, with_ids = body.return_tokens_as_token_ids, body.return_token_ids
    unsent_ids: list[list[int]] = [[] for _ in samplings]
    held = [HeldLogprobs(driver.tokenizer, samplings[0].skip_special_tokens) for _ in samplings]
    parsers = [choice_parser(tools) for _ in samplings]
    calls_sent = [0] * len(samplings)
    running = RunningUsage(body.stream_options, len(samplings))

    async def send_text(index: int, text: str, finished: bool) -> None:
        parser = parsers[index]
        if parser is None:
            if text:
                await stream.send(chunk(index, ChatDelta(content=text)))
            return
        content, calls = parser.feed(text)
        if finished:
            rest, more = parser.finish()
            content, calls = content + rest, calls + more
        if content:
            await stream.send(chunk(index, ChatDelta(content=content)))
        if calls:
            deltas = [
                ToolCallDelta(index=calls_sent[index] + k, id=c.id,
                              function=FunctionCall(name=c.name, arguments=c.arguments))
                for k, c in enumerate(calls)
            ]  # fmt: skip
            calls_sent[index] += len(calls)
            await stream.send(chunk(index, ChatDelta(tool_calls=deltas)))

    def chunk(
        index: int, delta: ChatDelta, reason: str | None = None, stop: int | str | None = None
    ) -> ChatCompletionChunk:
        released = held[index].release(delta.content or "", finished=reason is not None)
        entries = [entry for entry, _ in released]
        logprobs = chat_logprobs(driver.tokenizer, entries, as_ids) if asked and entries else None
        token_ids = None
        if with_ids:
            token_ids, unsent_ids[index] = unsent_ids[index], []
        choice = ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=reason,
                                 stop_reason=stop, token_ids=token_ids)  # fmt: skip
        return ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[choice],
                                   usage=running.of(index, len(ids)))  # fmt: skip

    # a forced call's answer is calls only: no content, as unstreamed (OpenAI's role delta of a
    # call has none), so the client's accumulated message has content null, not ""; other
    # answers open with "", as OpenAI's and vLLM's do
    opening = None if tools is not None and tools.required else ""
    stream = EventStream(request)
    await stream.open()
    with contextlib.suppress(ConnectionError):
        for index in range(len(samplings)):
            role = ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=opening))
            await stream.send(ChatCompletionChunk(
                id=cid, created=created, model=body.model, choices=[role],
                prompt_token_ids=list(ids) if with_ids else None,
                usage=running.of(index, len(ids)),
            ))  # fmt: skip
            if echoed:
                choice = ChatChunkChoice(index=index, delta=ChatDelta(content=echoed))
                await stream.send(ChatCompletionChunk(id=cid, created=created, model=body.model,
                                                      choices=[choice],
                                                      usage=running.of(index, len(ids))))  # fmt: skip
        finals: dict[int, JobOutput] = {}
        outputs = stream_outputs(stream, request.app[ENGINES], [ids], [samplings], timing,
                           placement_of(body))  # fmt: skip
        async for index, out in outputs:
            held[index].add(out.new_logprobs)
            unsent_ids[index].extend(out.new_token_ids)
            running.add(index, out)
            await send_text(index, out.new_text, out.finished)
            if out.finished:
                finals[index] = out
                reason = finish_reason(out, bool(calls_sent[index]) and called(tools))
                await stream.send(chunk(index, ChatDelta(), reason, stop_reason(out, body)))
        # a stream that failed (its error event sent) has a choice unfinished: [DONE] alone
        everything = len(finals) == len(samplings)
        if everything and body.stream_options and body.stream_options.include_usage:
            usage = _usage(ids, [finals[i] for i in sorted(finals)], len(finals))
            await stream.send(
                ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[],
                                    usage=usage)
            )  # fmt: skip
        await stream.send("[DONE]")
        await stream.close()
    return stream.response


async def _stream_completion(
    request: web.Request,
    driver: EngineDriver,
    prompts: list[str],
    prompt_ids: list[list[int]],
    per_prompt: list[list[SamplingParams]],
    cid: str,
    body: CompletionRequest,
    echo: _Echo,
    timing: RequestTiming,
) -> web.StreamResponse:
    """Choice k * n + i is sample i of prompt k, as in the non-streamed response. With vLLM's
    `return_token_ids` a choice's first chunk carries its prompt's ids, and each chunk the ids
    generated since the choice's previous one (ids whose text is held back wait with it)."""
    created = int(time.time())
    n = len(per_prompt[0])
    count = n * len(prompts)
    asked = per_prompt[0][0].logprobs is not None
    skip = per_prompt[0][0].skip_special_tokens
    as_ids, with_ids = body.return_tokens_as_token_ids, body.return_token_ids
    unsent_ids: list[list[int]] = [[] for _ in range(count)]
    prompt_sent: set[int] = set()
    held = [HeldLogprobs(driver.tokenizer, skip) for _ in range(count)]
    running = RunningUsage(body.stream_options, count)

    def choice(
        index: int,
        text: str,
        finish_reason: str | None,
        logprobs: CompletionLogprobs | None,
        stop: int | str | None = None,
    ) -> Completion:
        """A chunk of choice `index` (with the ids since its previous chunk, if asked)."""
        part = CompletionChoice(index=index, text=text, logprobs=logprobs,
                                finish_reason=finish_reason, stop_reason=stop)  # type: ignore[arg-type]
        if with_ids:
            if index not in prompt_sent:
                prompt_sent.add(index)
                part.prompt_token_ids = list(prompt_ids[index // n])
            part.token_ids, unsent_ids[index] = unsent_ids[index], []
        return Completion(id=cid, created=created, model=body.model, choices=[part],
                          usage=running.of(index, len(prompt_ids[index // n])))  # fmt: skip

    to_echo = set(range(count)) if echo.on else set()
    stream = EventStream(request)
    await stream.open()
    with contextlib.suppress(ConnectionError):
        finals: dict[int, JobOutput] = {}
        outputs = stream_outputs(stream, request.app[ENGINES], prompt_ids, per_prompt, timing,
                           placement_of(body))  # fmt: skip
        async for index, out in outputs:
            prompt, ids = prompts[index // n], prompt_ids[index // n]
            running.add(index, out)
            if index in to_echo and (not echo.scored or out.prompt_logprobs is not None):
                # the prompt first, once its scores (if asked) are in
                to_echo.discard(index)
                prompt_lps = completion_logprobs(
                    driver.tokenizer, out.prompt_logprobs or [], first_token_id=ids[0],
                    skip_special_tokens=False,  # as the echoed text has them (prompt_text)
                    as_ids=as_ids,
                ) if asked else None  # fmt: skip
                await stream.send(choice(index, prompt, None, prompt_lps))
            if echo.hides_generation:
                if out.finished:
                    finals[index] = out
                    await stream.send(choice(index, "", "length", None))
                continue
            held[index].add(out.new_logprobs)
            unsent_ids[index].extend(out.new_token_ids)
            if out.finished:
                finals[index] = out
            if out.new_text or out.finished:
                logprobs = None
                released = held[index].release(out.new_text, out.finished)
                if asked:
                    # the generation's text starts after the echoed prompt
                    logprobs = completion_logprobs(
                        driver.tokenizer, [entry for entry, _ in released],
                        len(prompts[index // n]) if echo.on else 0,
                        starts=[start for _, start in released], skip_special_tokens=skip,
                        as_ids=as_ids,
                    )  # fmt: skip
                reason = finish_reason(out) if out.finished else None
                stop = stop_reason(out, body) if out.finished else None
                await stream.send(choice(index, out.new_text, reason, logprobs, stop))
        # a stream that failed (its error event sent) has a choice unfinished: [DONE] alone
        if len(finals) == count and body.stream_options and body.stream_options.include_usage:
            usage = _usage([t for ids in prompt_ids for t in ids],
                           [finals[i] for i in sorted(finals)], n,
                           not echo.hides_generation)  # fmt: skip
            await stream.send(
                Completion(id=cid, created=created, model=body.model, choices=[], usage=usage)
            )
        await stream.send("[DONE]")
        await stream.close()
    return stream.response


# -- helpers -------------------------------------------------------------------------------------


def _check_common(request: web.Request, body: OpenAIRequest) -> None:
    kind = (body.response_format or {}).get("type", "text")
    if kind not in ("text", "json_object", "json_schema"):
        raise bad_request(
            f"response_format: {kind!r} is not supported; the types are text, json_object and "
            "json_schema",
            param="response_format",
        )
    if body.stream_options is not None and not body.stream:
        raise bad_request(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    check_model(request, body.model)
    refuse_extensions(body, UNSUPPORTED_EXTENSIONS)


def check_model(request: web.Request, model: str) -> None:
    """404 `model_not_found` for a model this server does not serve (by its id or name)."""
    config, driver = request.app[CONFIG], request.app[DRIVER]
    if model not in (config.model_id, driver.name):
        raise not_found(
            f"the model {model!r} does not exist; this server serves {config.model_id!r}",
            code="model_not_found",
        )


def _completion_prompts(
    driver: EngineDriver, body: CompletionRequest
) -> tuple[list[str], list[list[int]]]:
    """The request's prompts as texts and token ids, each cut to vLLM's
    `truncate_prompt_tokens` when asked."""
    prompts, prompt_ids = completion_prompts(
        driver, body.prompt, body.add_special_tokens, body.truncate_prompt_tokens is not None
    )
    if body.truncate_prompt_tokens is not None:
        kept = [truncated_prompt(driver, body, ids) for ids in prompt_ids]
        prompts = [p if len(k) == len(ids) else prompt_text(driver, k)
                   for p, k, ids in zip(prompts, kept, prompt_ids, strict=True)]  # fmt: skip
        prompt_ids = kept
    return prompts, prompt_ids


@dataclasses.dataclass(frozen=True)
class _Echo:
    """The completions API's `echo`: the prompt leads the choice's text (and its logprobs,
    scored by the model, when logprobs are asked for); with max_tokens 0 only the prompt comes
    back (one token is generated, as the engine always samples, and left out)."""

    on: bool
    scored: bool
    hides_generation: bool

    @classmethod
    def of(cls, body: CompletionRequest, n: int, logprobs: int | None) -> _Echo:
        if body.max_tokens == 0 and not body.echo:
            raise bad_request(
                "max_tokens must be at least 1 (0 only with echo, to score the prompt)",
                param="max_tokens",
            )
        scored = body.echo and logprobs is not None
        if scored and n > 1:
            raise bad_request("echo with logprobs takes n=1", param="n")
        return cls(body.echo, scored, body.max_tokens == 0)

    def max_tokens(self, body: CompletionRequest) -> int:
        if self.hides_generation:
            return 1
        return body.max_tokens or _DEFAULT_COMPLETION_TOKENS

    def choice(
        self, prompt: str, final: JobOutput, logprobs: list[TokenLogprob], top: int | None
    ) -> tuple[str, list[TokenLogprob | None], list[TokenLogprob]]:
        """The choice's text, its echoed prompt's token logprobs (`top` alternatives each; the
        engine may have scored more for prompt_logprobs) and its generation's."""
        text = prompt if self.on else ""
        scored: list[TokenLogprob | None] = [
            None if e is None else dataclasses.replace(e, top=e.top[:top])
            for e in final.prompt_logprobs or []
        ] if self.scored else []  # fmt: skip
        generated: list[TokenLogprob] = []
        if not self.hides_generation:
            text += final.text
            generated = logprobs
        return text, scored, generated

    def reason(self, final: JobOutput) -> str:
        return "length" if self.hides_generation else finish_reason(final)

    def generated_ids(self, final: JobOutput) -> list[int]:
        """The choice's generated ids (vLLM's `token_ids`): none when only the prompt is
        scored (the one token sampled is left out)."""
        return [] if self.hides_generation else list(final.token_ids)


def _usage(
    ids: list[int], finals: list[JobOutput], n: int = 1, generated: bool = True
) -> Usage:
    """The usage of prompts `ids` (all of them, joined) and their `n` samples each (`finals`,
    in choice order: prompt k's sample i at k * n + i). A prompt counts once however many
    samples were drawn from it, as do the tokens it took from the prefix cache (its samples
    fork it, computed once). `generated` false: no completion tokens (an echo that only
    scores the prompt)."""
    count = sum(len(f.token_ids) for f in finals) if generated else 0
    cached = sum(f.cached_tokens or 0 for f in finals[::n])
    return Usage(prompt_tokens=len(ids), completion_tokens=count,
                 total_tokens=len(ids) + count,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))  # fmt: skip
