"""The OpenAI-compatible API: plain requests, no graph, but the engine's prefix cache applies."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from server.api.disconnect import unless_disconnected
from server.api.logprobs import HeldLogprobs, chat_logprobs, completion_logprobs
from server.api.openai_models import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIRequest,
    Usage,
)
from server.api.route import Route, json_response, parse_body
from server.api.sse import EventStream
from server.engine import EngineError, JobOutput, SamplingParams, TokenLogprob
from server.engine.sampling_params import MAX_LOGPROBS, offset_seed
from server.engine_driver import EngineDriver
from server.engine_pool import EnginePool
from server.errors import ApiError, bad_request, error_body, not_found
from server.keys import CONFIG, DRIVER, ENGINES, METRICS
from server.stream_merge import merge_streams

_DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions

# vLLM's request extensions the engine cannot honour, with the values that change nothing
# (None always does): any other value gets a 400 rather than a silently different result
_UNSUPPORTED_EXTENSIONS: dict[str, object] = {
    "min_p": 0, "repetition_penalty": 1, "min_tokens": 0, "use_beam_search": False,
    "length_penalty": 1, "include_stop_str_in_output": False, "skip_special_tokens": True,
    "spaces_between_special_tokens": True, "truncate_prompt_tokens": None,
    "prompt_logprobs": None, "allowed_token_ids": None, "bad_words": None,
    "logits_processors": None, "guided_json": None, "guided_regex": None,
    "guided_choice": None, "guided_grammar": None, "structured_outputs": None,
    "guided_whitespace_pattern": None, "vllm_xargs": None,
}  # fmt: skip
_UNSUPPORTED_CHAT_EXTENSIONS: dict[str, object] = {
    "echo": False, "chat_template": None, "documents": None, "mm_processor_kwargs": None,
}


def openai_routes() -> list[Route]:
    tag = "openai"
    return [
        Route("GET", "/v1/models", list_models, "The served model", tag, response=ModelList),
        Route("GET", "/v1/models/{model}", retrieve_model, "The served model, by its id", tag,
              response=ModelCard),
        Route("POST", "/v1/completions", create_completion, "Complete a prompt", tag,
              body=CompletionRequest, response=Completion),
        Route("POST", "/v1/chat/completions", create_chat_completion,
              "Chat completion (the model's chat template); stream=true sends chunks", tag,
              body=ChatCompletionRequest, response=ChatCompletion),
    ]  # fmt: skip


async def list_models(request: web.Request) -> web.Response:
    return json_response(ModelList(data=[_model_card(request)]))


async def retrieve_model(request: web.Request) -> web.Response:
    """OpenAI's `GET /v1/models/{model}` (the client's `models.retrieve`)."""
    _check_model(request, request.match_info["model"])
    return json_response(_model_card(request))


def _model_card(request: web.Request) -> ModelCard:
    return ModelCard(
        id=request.app[CONFIG].model_id,
        created=int(time.time()),
        max_model_len=request.app[DRIVER].max_model_len,
    )


async def create_completion(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, CompletionRequest)
    _check_common(request, body)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise bad_request("best_of is not supported (only equal to n)", param="best_of")
    driver = request.app[DRIVER]
    prompts, prompt_ids = _prompts(driver, body.prompt)
    n = body.n or 1
    logprobs = _completion_logprobs_asked(body)
    echo = _Echo.of(body, n, logprobs)
    max_tokens = echo.max_tokens(body)
    samplings = [
        _samples(
            _sampling(driver, body, ids, max_tokens, logprobs, logprobs if echo.scored else None),
            n,
        )
        for ids in prompt_ids
    ]
    cid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    for ids in prompt_ids:
        request.app[METRICS].prompt_tokens.inc(len(ids))
    if body.stream:
        return await _stream_completion(
            request, driver, prompts, prompt_ids, samplings, cid, body, echo
        )
    per_prompt = await unless_disconnected(request, asyncio.gather(
        *(_run(request.app[ENGINES], ids, s) for ids, s in zip(prompt_ids, samplings, strict=True))
    ))  # fmt: skip
    choices, completion_tokens = [], 0
    for k, outs in enumerate(per_prompt):  # OpenAI's order: by prompt, then sample
        for f, lps in outs:
            text, entries = echo.choice(prompts[k], f, lps)
            choices.append(CompletionChoice(
                index=len(choices), text=text, finish_reason=echo.reason(f),
                logprobs=None if logprobs is None else completion_logprobs(
                    driver.tokenizer, entries, first_token_id=prompt_ids[k][0]),
            ))  # fmt: skip
            completion_tokens += 0 if echo.hides_generation else len(f.token_ids)
    prompt_tokens = sum(len(ids) for ids in prompt_ids)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return json_response(
        Completion(id=cid, created=created, model=model, choices=choices, usage=usage)
    )


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ChatCompletionRequest)
    _check_common(request, body)
    if body.tools:
        raise bad_request("tools are not supported", param="tools")
    if body.functions or body.function_call not in (None, "none"):
        raise bad_request("function calling is not supported", param="functions")
    if body.tool_choice not in (None, "none", "auto"):  # "auto" with no tools: no tool call
        raise bad_request("tool_choice is not supported (no tools)", param="tool_choice")
    _refuse_extensions(body, _UNSUPPORTED_CHAT_EXTENSIONS)
    driver = request.app[DRIVER]
    ids = _encode(driver, _chat_prompt(driver, body), "messages")
    requested = body.max_completion_tokens or body.max_tokens
    max_tokens = requested or max(1, driver.max_model_len - len(ids))  # default: fill the context
    logprobs = _chat_logprobs_asked(body)
    samplings = _samples(_sampling(driver, body, ids, max_tokens, logprobs), body.n or 1)
    request.app[METRICS].prompt_tokens.inc(len(ids))
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    if body.stream:
        return await _stream_chat(request, driver, ids, samplings, cid, body)
    done = await unless_disconnected(request, _run(request.app[ENGINES], ids, samplings))
    finals = [f for f, _ in done]
    choices = [
        ChatChoice(
            index=i, message=AssistantMessage(content=f.text), finish_reason=_reason(f),
            logprobs=None if logprobs is None else chat_logprobs(driver.tokenizer, lps),
        )
        for i, (f, lps) in enumerate(done)
    ]
    return json_response(
        ChatCompletion(id=cid, created=created, model=model, choices=choices,
                       usage=_usage(ids, finals))
    )  # fmt: skip


# -- streaming -----------------------------------------------------------------------------------


async def _stream_chat(
    request: web.Request,
    driver: EngineDriver,
    ids: list[int],
    samplings: list[SamplingParams],
    cid: str,
    body: ChatCompletionRequest,
) -> web.StreamResponse:
    created = int(time.time())

    asked = samplings[0].logprobs is not None
    held = [HeldLogprobs(driver.tokenizer) for _ in samplings]

    def chunk(index: int, delta: ChatDelta, reason: str | None = None) -> ChatCompletionChunk:
        entries = held[index].release(delta.content or "", finished=reason is not None)
        logprobs = chat_logprobs(driver.tokenizer, entries) if asked and entries else None
        choice = ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=reason)
        return ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[choice])

    stream = EventStream(request)
    await stream.open()
    with contextlib.suppress(ConnectionError):
        for index in range(len(samplings)):
            await stream.send(chunk(index, ChatDelta(role="assistant", content="")))
        finals: dict[int, JobOutput] = {}
        async for index, out in _outputs(stream, request.app[ENGINES], [ids], [samplings]):
            held[index].add(out.new_logprobs)
            if out.new_text:
                await stream.send(chunk(index, ChatDelta(content=out.new_text)))
            if out.finished:
                finals[index] = out
                await stream.send(chunk(index, ChatDelta(), _reason(out)))
        everything = len(finals) == len(samplings)
        if everything and body.stream_options and body.stream_options.include_usage:
            usage = _usage(ids, list(finals.values()))
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
) -> web.StreamResponse:
    """Choice k * n + i is sample i of prompt k, as in the non-streamed response."""
    created = int(time.time())
    n = len(per_prompt[0])
    count = n * len(prompts)
    asked = per_prompt[0][0].logprobs is not None
    held = [HeldLogprobs(driver.tokenizer) for _ in range(count)]
    offsets = dict.fromkeys(range(count), 0)  # the next logprob's text_offset
    to_echo = set(range(count)) if echo.on else set()
    stream = EventStream(request)
    await stream.open()
    with contextlib.suppress(ConnectionError):
        finals: dict[int, JobOutput] = {}
        outputs = _outputs(stream, request.app[ENGINES], prompt_ids, per_prompt)
        async for index, out in outputs:
            prompt, ids = prompts[index // n], prompt_ids[index // n]
            if index in to_echo and (not echo.scored or out.prompt_logprobs is not None):
                # the prompt first, once its scores (if asked) are in
                to_echo.discard(index)
                prompt_lps = completion_logprobs(
                    driver.tokenizer, out.prompt_logprobs or [], first_token_id=ids[0]
                ) if asked else None  # fmt: skip
                offsets[index] += len(prompt)
                await stream.send(Completion(id=cid, created=created, model=body.model, choices=[
                    CompletionChoice(index=index, text=prompt, logprobs=prompt_lps,
                                     finish_reason=None)
                ]))  # fmt: skip
            if echo.hides_generation:
                if out.finished:
                    finals[index] = out
                    choice = CompletionChoice(index=index, text="", finish_reason="length")
                    await stream.send(
                        Completion(id=cid, created=created, model=body.model, choices=[choice])
                    )
                continue
            held[index].add(out.new_logprobs)
            if out.finished:
                finals[index] = out
            if out.new_text or out.finished:
                logprobs = None
                entries = held[index].release(out.new_text, out.finished)
                if asked:
                    logprobs = completion_logprobs(driver.tokenizer, entries, offsets[index])
                    offsets[index] += sum(map(len, logprobs.tokens))
                choice = CompletionChoice(
                    index=index, text=out.new_text, logprobs=logprobs,
                    finish_reason=_reason(out) if out.finished else None,
                )  # fmt: skip
                await stream.send(
                    Completion(id=cid, created=created, model=body.model, choices=[choice])
                )
        if len(finals) == count and body.stream_options and body.stream_options.include_usage:
            usage = _usage(
                [t for ids in prompt_ids for t in ids],
                [] if echo.hides_generation else list(finals.values()),
            )
            await stream.send(
                Completion(id=cid, created=created, model=body.model, choices=[], usage=usage)
            )
        await stream.send("[DONE]")
        await stream.close()
    return stream.response


async def _outputs(
    stream: EventStream,
    engines: EnginePool,
    prompt_ids: list[list[int]],
    per_prompt: list[list[SamplingParams]],
) -> AsyncIterator[tuple[int, JobOutput]]:
    """(choice index: prompt k's sample i is k * n + i, engine output) of the prompts'
    samples, as they come; an engine error after the stream started is sent as an error
    event."""
    n = len(per_prompt[0])
    runs = [_generate(engines, ids, s) for ids, s in zip(prompt_ids, per_prompt, strict=True)]
    try:
        if len(runs) == 1:
            async with contextlib.aclosing(runs[0]) as outputs:  # type: ignore[type-var]
                async for item in outputs:
                    yield item
        else:
            merged = merge_streams(runs)  # type: ignore[arg-type]
            async with contextlib.aclosing(merged):  # type: ignore[type-var]
                async for k, (i, out) in merged:
                    yield k * n + i, out
    except (ValueError, EngineError) as exc:
        await stream.send(error_body(str(exc), "invalid_request_error"))


# -- helpers -------------------------------------------------------------------------------------


async def _run(
    engines: EnginePool, ids: list[int], samplings: list[SamplingParams]
) -> list[tuple[JobOutput, list[TokenLogprob]]]:
    """The finished output of each sample (with the prompt's logprobs, if asked) and its
    tokens' logprobs (if asked), in order (see `_generate`)."""
    finals: list[JobOutput | None] = [None] * len(samplings)
    logprobs: list[list[TokenLogprob]] = [[] for _ in samplings]
    prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
    outputs = _generate(engines, ids, samplings)
    try:
        # closed at once when cancelled (the client left): that aborts the engine jobs
        async with contextlib.aclosing(outputs):  # type: ignore[type-var]
            async for index, out in outputs:
                finals[index] = out
                logprobs[index].extend(out.new_logprobs)
                if out.prompt_logprobs is not None:
                    prompt_logprobs[index] = out.prompt_logprobs
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    except EngineError as exc:
        raise ApiError(500, str(exc), type="server_error") from exc
    assert all(f is not None and f.finished for f in finals)
    for index, scores in prompt_logprobs.items():  # they came with an earlier output
        finals[index].prompt_logprobs = scores  # type: ignore[union-attr]
    return list(zip(finals, logprobs, strict=True))  # type: ignore[arg-type]


def _generate(
    engines: EnginePool, ids: list[int], samplings: list[SamplingParams]
) -> AsyncIterator[tuple[int, JobOutput]]:
    """A plain request on the least loaded engine, at normal priority (latency-critical graph
    calls go first, bulk graph work after): one sample through the prefix cache, or several
    (`n`) forking one computed prompt."""
    if len(samplings) > 1:
        return engines.generate_samples(ids, samplings)
    return _indexed(engines.generate_plain(ids, samplings[0]))


async def _indexed(outputs: AsyncIterator[JobOutput]) -> AsyncIterator[tuple[int, JobOutput]]:
    async with contextlib.aclosing(outputs):  # type: ignore[type-var]
        async for out in outputs:
            yield 0, out


def _samples(sampling: SamplingParams, n: int) -> list[SamplingParams]:
    """`n` samplings of one request: with a seed, sample i draws from seed + i, so every
    sample is reproducible and they differ from each other."""
    if n == 1 or sampling.seed is None:
        return [sampling] * n
    return [dataclasses.replace(sampling, seed=offset_seed(sampling.seed, i)) for i in range(n)]


def _check_common(request: web.Request, body: OpenAIRequest) -> None:
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise bad_request(
            "response_format: only {\"type\": \"text\"} is supported (no JSON mode or schemas)",
            param="response_format",
        )
    _check_model(request, body.model)
    _refuse_extensions(body, _UNSUPPORTED_EXTENSIONS)


def _check_model(request: web.Request, model: str) -> None:
    config, driver = request.app[CONFIG], request.app[DRIVER]
    if model not in (config.model_id, driver.name):
        raise not_found(
            f"the model {model!r} does not exist; this server serves {config.model_id!r}",
            code="model_not_found",
        )


def _refuse_extensions(body: OpenAIRequest, unsupported: dict[str, object]) -> None:
    """400 for a vLLM extension (an unknown field to OpenAI) that would change the result."""
    for name, value in (body.model_extra or {}).items():
        if name in unsupported and value is not None and value != unsupported[name]:
            if isinstance(value, list | dict) and not value:
                continue
            raise bad_request(
                f"{name} is not supported by this server (got {value!r})", param=name
            )


def _prompts(
    driver: EngineDriver, prompt: str | list[str] | list[int] | list[list[int]]
) -> tuple[list[str], list[list[int]]]:
    """The completions API's prompts as texts (what `echo` returns) and token ids: one text,
    several, one list of token ids or several (ids are taken as they are; their text is
    their decoding)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if isinstance(prompt[0], str):
        texts = [p for p in prompt if isinstance(p, str)]
        return texts, [_encode(driver, p, "prompt") for p in texts]
    lists = [prompt] if isinstance(prompt[0], int) else prompt
    vocab = driver.vocab_size
    for k, ids in enumerate(lists):
        if not ids:
            raise bad_request(f"prompt[{k}] is an empty list of token ids", param="prompt")
        bad = next((t for t in ids if not 0 <= t < vocab), None)  # type: ignore[operator]
        if bad is not None:
            raise bad_request(
                f"prompt: {bad} is not a token id of this model (0 to {vocab - 1})",
                param="prompt",
            )
    ids_lists: list[list[int]] = [list(ids) for ids in lists]  # type: ignore[arg-type]
    return [driver.tokenizer.decode(ids) for ids in ids_lists], ids_lists


def _chat_prompt(driver: EngineDriver, body: ChatCompletionRequest) -> str:
    """The messages through the model's chat template. With vLLM's `continue_final_message`
    the text ends where the final message's content does (as transformers cuts it), so the
    completion continues that message."""
    messages: list[dict[str, object]] = []
    for i, m in enumerate(body.messages):
        message: dict[str, object] = {"role": m.role, "content": _content(m.content, i)}
        if m.name is not None:
            message["name"] = m.name
        messages.append(message)
    cont = body.continue_final_message
    if cont and body.add_generation_prompt:
        raise bad_request(
            "continue_final_message takes add_generation_prompt false (the prompt ends inside "
            "the final message, not in a new assistant turn)",
            param="continue_final_message",
        )
    try:
        text = driver.tokenizer.apply_chat_template(
            messages, body.add_generation_prompt, **(body.chat_template_kwargs or {})
        )
    except Exception as exc:  # a template's raise_exception or a model without a template
        raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from exc
    if not cont:
        return text
    final = str(messages[-1]["content"])
    at = text.rfind(final.strip())
    if at < 0:
        raise bad_request(
            "continue_final_message: the chat template does not keep the final message's "
            "content, so the completion cannot continue it",
            param="continue_final_message",
        )
    keep = final.lstrip()
    return text[: at + (len(keep) if text[at : at + len(keep)] == keep else len(final.strip()))]


def _encode(driver: EngineDriver, text: str, param: str) -> list[int]:
    ids = driver.encode(text)
    if not ids:
        raise bad_request(f"{param} is empty after tokenization", param=param)
    return ids


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
        self, prompt: str, final: JobOutput, logprobs: list[TokenLogprob]
    ) -> tuple[str, list[TokenLogprob | None]]:
        """The choice's text and its tokens' logprobs."""
        text = prompt if self.on else ""
        entries: list[TokenLogprob | None] = list(final.prompt_logprobs or []) if self.scored else []
        if not self.hides_generation:
            text += final.text
            entries += logprobs
        return text, entries

    def reason(self, final: JobOutput) -> str:
        return "length" if self.hides_generation else _reason(final)


def _completion_logprobs_asked(body: CompletionRequest) -> int | None:
    """The completions API's `logprobs`: how many alternatives per token (None: none)."""
    if body.logprobs is None or body.logprobs is False:
        return None
    if body.logprobs is True or not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise bad_request(
            f"logprobs must be an integer from 0 to {MAX_LOGPROBS} for completions (the number "
            f"of most likely tokens to return at each position), got {body.logprobs!r}",
            param="logprobs",
        )
    return body.logprobs


def _chat_logprobs_asked(body: ChatCompletionRequest) -> int | None:
    """The chat API's `logprobs` (true/false) and `top_logprobs` (alternatives per token)."""
    if body.logprobs is not None and not isinstance(body.logprobs, bool):
        raise bad_request(
            "logprobs must be true or false for chat completions; top_logprobs says how many "
            "alternatives to return",
            param="logprobs",
        )
    if not body.logprobs:
        if body.top_logprobs:
            raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
        return None
    return body.top_logprobs or 0


def _sampling(
    driver: EngineDriver,
    body: OpenAIRequest,
    ids: list[int],
    max_tokens: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    limit = driver.max_model_len
    if len(ids) + max_tokens > limit:
        raise bad_request(
            f"this model's maximum context length is {limit} tokens, but {len(ids) + max_tokens} "
            f"were requested ({len(ids)} in the prompt, {max_tokens} for the completion)",
            code="context_length_exceeded",
            param="max_tokens",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", param="stop")
    stop_ids = body.stop_token_ids or []
    bad = next((t for t in stop_ids if not 0 <= t < driver.vocab_size), None)
    if bad is not None:
        raise bad_request(
            f"stop_token_ids: {bad} is not a token id of this model (0 to "
            f"{driver.vocab_size - 1})",
            param="stop_token_ids",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=-1 if body.top_k is None else body.top_k,
        seed=body.seed,
        stop=stop,
        stop_token_ids=stop_ids,
        ignore_eos=body.ignore_eos,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=_logit_bias(driver, body.logit_bias),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def _logit_bias(driver: EngineDriver, asked: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's logit_bias (token ids as strings) as the engine takes it; 400 when a key is not
    a token id of this model or a bias lies outside [-100, 100]."""
    bias: dict[int, float] = {}
    vocab = driver.vocab_size
    for key, value in (asked or {}).items():
        token = int(key) if key.strip().isdigit() else -1
        if not 0 <= token < vocab:
            raise bad_request(
                f"logit_bias: {key!r} is not a token id of this model (0 to {vocab - 1})",
                param="logit_bias",
            )
        if not -100 <= value <= 100:  # NaN fails this too
            raise bad_request(
                f"logit_bias: the bias of token {key} must be in [-100, 100], got {value}",
                param="logit_bias",
            )
        bias[token] = float(value)
    return bias


def _content(content: object, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:  # type: ignore[attr-defined]
        if part.type != "text" or part.text is None:
            raise bad_request(
                f"messages[{index}]: only text content parts are supported, got {part.type!r}",
                param="messages",
            )
        texts.append(part.text)
    return "".join(texts)


def _reason(out: JobOutput) -> str:
    return "length" if out.finish_reason == "length" else "stop"


def _usage(ids: list[int], finals: list[JobOutput]) -> Usage:
    """The prompt counts once however many samples were drawn from it."""
    n = sum(len(f.token_ids) for f in finals)
    return Usage(prompt_tokens=len(ids), completion_tokens=n, total_tokens=len(ids) + n)
