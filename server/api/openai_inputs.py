"""What an OpenAI-API request asks of the engine: its prompts as token ids, its sampling, and
the checks that refuse what the engine cannot honour (400s naming the field)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from server.api.openai_models import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from server.api.tool_request import (
    ToolRequest,
    check_tool_calls,
    has_tool_turns,
    render_tool_turns,
)
from server.engine import SamplingParams
from server.engine.grammar import GrammarError, compiled_grammar
from server.engine.json_schema import SchemaError, compile_schema
from server.engine.regex_prefix import RegexError, compiled_regex
from server.engine.sampling_params import MAX_LOGPROBS, check_stop_strings, offset_seed
from server.engine_driver import EngineDriver
from server.errors import bad_request
from server.scheduling import LATENCY_PRIORITY, NORMAL_PRIORITY, THROUGHPUT_PRIORITY

# vLLM's request extensions the engine cannot honour, with the values that change nothing
# (None always does): any other value gets a 400 rather than a silently different result
UNSUPPORTED_EXTENSIONS: dict[str, object] = {
    "use_beam_search": False, "length_penalty": 1, "spaces_between_special_tokens": True,
    "logits_processors": None,
    "guided_whitespace_pattern": None, "vllm_xargs": None,
    "kv_transfer_params": None, "structural_tag": None, "prompt_embeds": None,
}  # fmt: skip


UNSUPPORTED_CHAT_EXTENSIONS: dict[str, object] = {
    "chat_template": None, "documents": None, "mm_processor_kwargs": None,
}

# transformers' marker of where a continued final message ends (continue_final_message)
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """How the engines take a plain request: its scheduling class and its prefix-cache salt."""

    priority: int
    cache_salt: str | None


def placement_of(body: OpenAIRequest) -> Placement:
    return Placement(plain_priority(body), body.cache_salt)


def plain_priority(body: OpenAIRequest) -> int:
    """The scheduling class of a plain request from vLLM's `priority` (lower goes first, 0 by
    default): below 0 latency-critical (with graph calls that a client awaits), 0 normal,
    above 0 bulk (with a graph's throughput work). Within a class, requests keep their order."""
    if not body.priority:
        return NORMAL_PRIORITY
    return LATENCY_PRIORITY if body.priority < 0 else THROUGHPUT_PRIORITY


def samples_of(sampling: SamplingParams, n: int) -> list[SamplingParams]:
    """`n` samplings of one request: with a seed, sample i draws from seed + i, so every
    sample is reproducible and they differ from each other."""
    if n == 1 or sampling.seed is None:
        return [sampling] * n
    return [dataclasses.replace(sampling, seed=offset_seed(sampling.seed, i)) for i in range(n)]


def refuse_extensions(body: OpenAIRequest, unsupported: dict[str, object]) -> None:
    """400 for a vLLM extension (an unknown field to OpenAI) that would change the result."""
    for name, value in (body.model_extra or {}).items():
        if name in unsupported and value is not None and value != unsupported[name]:
            if isinstance(value, list | dict) and not value:
                continue
            raise bad_request(
                f"{name} is not supported by this server (got {value!r})", param=name
            )


def completion_prompts(
    driver: EngineDriver,
    prompt: str | list[str] | list[int] | list[list[int]],
    add_special_tokens: bool = True,
    truncated: bool = False,
) -> tuple[list[str], list[list[int]]]:
    """The completions API's prompts as texts (what `echo` returns) and token ids: one text,
    several, one list of token ids or several (ids are taken as they are; their text is
    their decoding, special tokens' text included, as vLLM's and as a text prompt has it).
    A text gets the tokenizer's BOS unless `add_special_tokens` is false (vLLM's field);
    `truncated`: only its last tokens are kept (`truncated_prompt`), so it may be long."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if isinstance(prompt[0], str):
        texts = [p for p in prompt if isinstance(p, str)]
        ids_of = [encode_prompt(driver, p, "prompt", add_special_tokens, truncated) for p in texts]
        # a BOS added before a text is echoed with it, as a prompt of ids is (see prompt_text)
        echoed = [_with_added_lead(driver, p, ids) for p, ids in zip(texts, ids_of, strict=True)]
        return echoed, ids_of
    lists = [prompt] if isinstance(prompt[0], int) else prompt
    for k, ids in enumerate(lists):
        if not ids:
            raise bad_request(f"prompt[{k}] is an empty list of token ids", param="prompt")
        check_token_ids(driver, ids, "prompt")  # type: ignore[arg-type]
    ids_lists: list[list[int]] = [list(ids) for ids in lists]  # type: ignore[arg-type]
    return [prompt_text(driver, ids) for ids in ids_lists], ids_lists


def _with_added_lead(driver: EngineDriver, text: str, ids: list[int]) -> str:
    lead = list(driver.tokenizer.prompt_prefix_ids)
    if not lead or ids[: len(lead)] != lead:
        return text
    written = prompt_text(driver, lead)
    return text if text.startswith(written) else written + text


def prompt_text(driver: EngineDriver, ids: list[int]) -> str:
    """The text an echo returns for prompt tokens given as ids (or cut by
    truncate_prompt_tokens): every token's text, special tokens' too, so that the echoed
    logprobs' text_offset (see `logprobs.completion_logprobs`) lands on each token's text."""
    return driver.tokenizer.decode(ids, skip_special_tokens=False)


def chat_prompt(
    driver: EngineDriver, body: ChatCompletionRequest, tools: ToolRequest | None = None
) -> str:
    """The messages through the model's chat template. With vLLM's `continue_final_message`
    the text ends where the final message's content does (as transformers cuts it), so the
    completion continues that message. With `tools` (or past tool turns) the turns are
    rendered as `tool_request.render_tool_turns` says, and a forced call's primer ends the
    prompt."""
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(body.messages):
        message: dict[str, Any] = {"role": m.role, "content": message_text(m.content, i)}
        if m.name is not None:
            message["name"] = m.name
        if m.tool_calls:
            if m.role != "assistant":
                raise bad_request(f"messages[{i}]: only assistant messages have tool_calls",
                                  param="messages")  # fmt: skip
            message["tool_calls"] = check_tool_calls(m.tool_calls, i)
        messages.append(message)
    if tools is not None or has_tool_turns(messages):
        messages = render_tool_turns(messages, tools)
    cont = body.continue_final_message
    if cont and body.add_generation_prompt:
        raise bad_request(
            "continue_final_message takes add_generation_prompt false (the prompt ends inside "
            "the final message, not in a new assistant turn)",
            param="continue_final_message",
        )
    primer = tools.primer() if tools is not None else ""
    if primer and (cont or not body.add_generation_prompt):
        raise bad_request(
            "a required or named tool_choice starts the assistant's answer, so it takes "
            "add_generation_prompt and no continue_final_message",
            param="tool_choice",
        )
    if cont:
        # as transformers does: a tag after the final content marks where the prompt ends (a
        # search for the content itself can match template text after it, e.g. "end" inside
        # "<|im_end|>", or match nowhere when the content is empty)
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + _CONTINUE_TAG}
    try:
        text = driver.tokenizer.apply_chat_template(
            messages, body.add_generation_prompt, **(body.chat_template_kwargs or {})
        )
    except Exception as exc:  # a template's raise_exception or a model without a template
        raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from exc
    if not cont:
        return text + primer
    at = text.rfind(_CONTINUE_TAG.strip())
    if at < 0:
        raise bad_request(
            "continue_final_message: the chat template does not keep the final message's "
            "content, so the completion cannot continue it",
            param="continue_final_message",
        )
    # a template that trims contents trimmed the tag's space: the content's own trailing
    # whitespace went with it
    return text[:at] if text.startswith(_CONTINUE_TAG, at) else text[:at].rstrip()


def check_token_ids(driver: EngineDriver, ids: list[int], param: str) -> None:
    """400 naming `param` for the first id outside the model's vocabulary."""
    vocab = driver.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(
            f"{param}: {bad} is not a token id of this model (0 to {vocab - 1})", param=param
        )


def encode_prompt(
    driver: EngineDriver, text: str, param: str, add_special_tokens: bool, truncated: bool = False
) -> list[int]:
    """A prompt `text` as token ids, the tokenizer's leading special tokens (BOS) first when
    `add_special_tokens`; 400 naming `param` when nothing is left of it, or when its length
    alone shows it past the context (before a long text is tokenized, ~1 s per MB) and it is
    not to be `truncated` to its last tokens (vLLM's `truncate_prompt_tokens`)."""
    limit, fewest = driver.max_model_len, driver.fewest_tokens(text)
    if fewest >= limit and not truncated:
        raise bad_request(
            f"this model's maximum context length is {limit} tokens, but {param} has at least "
            f"{fewest} tokens (by its {len(text.encode('utf-8', 'surrogatepass'))} bytes)",
            code="context_length_exceeded",
            param=param,
        )
    ids = driver.encode_prompt(text, add_special_tokens)
    if not ids:
        raise bad_request(f"{param} is empty after tokenization", param=param)
    return ids


def completion_logprobs_asked(body: CompletionRequest) -> int | None:
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


def chat_logprobs_asked(body: ChatCompletionRequest) -> int | None:
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


def prompt_logprobs_asked(body: OpenAIRequest) -> int | None:
    """vLLM's `prompt_logprobs` (alternatives per prompt token), for one unstreamed sample:
    the engine scores a prompt that it computes whole for one generation."""
    if body.prompt_logprobs is None:
        return None
    if body.stream:
        raise bad_request("prompt_logprobs are not streamed: ask without stream",
                          param="prompt_logprobs")  # fmt: skip
    if (body.n or 1) > 1:
        raise bad_request("prompt_logprobs takes n=1", param="prompt_logprobs")
    return body.prompt_logprobs


def sampling_of(
    driver: EngineDriver,
    body: OpenAIRequest,
    ids: list[int],
    max_tokens: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The engine's sampling for one request: its fields checked against the model (context
    length, token ids) and OpenAI's defaults filled in."""
    limit = driver.max_model_len
    if len(ids) + max_tokens > limit:
        # the tools are described in the prompt: say so, as they may be most of it
        tools = ", the tools' descriptions included" if getattr(body, "tools", None) else ""
        raise bad_request(
            f"this model's maximum context length is {limit} tokens, but {len(ids) + max_tokens} "
            f"were requested ({len(ids)} in the prompt{tools}, {max_tokens} for the completion)",
            code="context_length_exceeded",
            # the prompt alone past the context is the prompt's fault, not the output's room
            param="max_tokens" if len(ids) < limit else _prompt_field(body),
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", param="stop")
    try:
        check_stop_strings(stop)
    except ValueError as exc:
        raise bad_request(f"stop: {exc}", param="stop") from exc
    stop_ids = body.stop_token_ids or []
    check_token_ids(driver, stop_ids, "stop_token_ids")
    if body.allowed_token_ids is not None:
        if not body.allowed_token_ids:
            raise bad_request("allowed_token_ids must not be empty", param="allowed_token_ids")
        check_token_ids(driver, body.allowed_token_ids, "allowed_token_ids")
    min_tokens = body.min_tokens or 0
    if min_tokens > max_tokens:
        raise bad_request(
            f"min_tokens ({min_tokens}) is more than max_tokens ({max_tokens})", param="min_tokens"
        )
    guided = guided_output(body)
    for name, value in (("ignore_eos", body.ignore_eos), ("min_tokens", min_tokens)):
        if value and guided.constrained:
            raise bad_request(f"constrained output ends when it is complete: no {name}",
                              param=name)  # fmt: skip
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
        logit_bias=logit_bias_of(driver, body.logit_bias),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        json_object=guided.json_object,
        json_schema=guided.schema,
        choices=guided.choices,
        regex=guided.regex,
        grammar=guided.grammar,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        min_tokens=min_tokens,
        include_stop_str_in_output=body.include_stop_str_in_output,
        skip_special_tokens=body.skip_special_tokens,
        allowed_token_ids=body.allowed_token_ids,
        bad_words_token_ids=bad_words_token_ids(driver, body.bad_words),
    )


def bad_words_token_ids(driver: EngineDriver, words: list[str] | None) -> list[list[int]]:
    """Each bad word's tokens as written at the start of a text and after a space (the two
    ways byte-level BPE tokenizes a word), without repeats; 400 for an empty word."""
    found: dict[tuple[int, ...], None] = {}  # in order; a list's `in` made 10k words take 20 s
    for k, word in enumerate(words or []):
        if not word.strip():
            raise bad_request(f"bad_words[{k}] is empty", param="bad_words")
        for text in (word.lstrip(), " " + word.lstrip()):
            ids = tuple(driver.encode(text))
            if ids:
                found[ids] = None
    return [list(ids) for ids in found]


def _prompt_field(body: OpenAIRequest) -> str:
    """The field that holds a request's prompt: chat's messages, a completion's prompt."""
    return "messages" if isinstance(body, ChatCompletionRequest) else "prompt"


def truncated_prompt(driver: EngineDriver, body: OpenAIRequest, ids: list[int]) -> list[int]:
    """vLLM's `truncate_prompt_tokens`: the prompt's last k tokens (-1: the model's maximum
    context length)."""
    k = body.truncate_prompt_tokens
    if k is None:
        return ids
    if k == 0:
        raise bad_request("truncate_prompt_tokens must be -1 or at least 1",
                          param="truncate_prompt_tokens")  # fmt: skip
    if k == -1:
        k = driver.max_model_len
    return ids[-k:]


def guided_output(body: OpenAIRequest) -> GuidedOutput:
    """What the request's output must follow: `response_format` (json_object or json_schema),
    vLLM's `structured_outputs` (`json`: a schema as an object or as JSON text, `json_object`,
    `choice`, `regex`, `grammar`), or its older `guided_json`, `guided_choice`,
    `guided_regex` and `guided_grammar` (removed from vLLM 0.12, still taken here). One of
    them at most; 400s name the field."""
    extra = body.model_extra or {}
    kind = (body.response_format or {}).get("type")
    asked: dict[str, tuple[str, object]] = {}  # field -> (what it asks for, its value)
    if kind in ("json_object", "json_schema"):
        asked["response_format"] = ("response_format", body.response_format)
    for name, what in (("guided_json", "json"), ("guided_choice", "choice"),
                       ("guided_regex", "regex"), ("guided_grammar", "grammar")):  # fmt: skip
        if extra.get(name) is not None:
            asked[name] = (what, extra[name])
    structured = extra.get("structured_outputs")
    if structured is not None:
        asked["structured_outputs"] = _structured_outputs(structured)
    if len(asked) > 1:
        raise bad_request(f"ask for one constrained output, not {', '.join(asked)} together",
                          param=list(asked)[-1])  # fmt: skip
    if not asked:
        return GuidedOutput()
    field, (what, value) = next(iter(asked.items()))
    param = field if field != "structured_outputs" else f"structured_outputs.{what}"
    if what == "response_format":
        return GuidedOutput(json_object=True, schema=response_schema(body.response_format))
    if what == "json_object":
        return GuidedOutput(json_object=True)
    if what == "choice":
        if not (isinstance(value, list) and value
                and all(isinstance(c, str) and c for c in value)):  # fmt: skip
            raise bad_request(f"{param} must be a list of non-empty strings", param=field)
        return GuidedOutput(choices=value)
    if what in ("regex", "grammar"):
        kind = "a pattern" if what == "regex" else "a grammar (GBNF text)"
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"{param} must be {kind}", param=field)
        try:
            compiled_regex(value) if what == "regex" else compiled_grammar(value)
        except (RegexError, GrammarError) as exc:
            raise bad_request(f"{param}: {exc}", param=field) from exc
        return GuidedOutput(**{what: value})
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past the stack
            raise bad_request(f"{param} is not JSON: {exc}", param=field) from exc
    return GuidedOutput(json_object=True, schema=checked_schema(value, param, field))


@dataclasses.dataclass(frozen=True, slots=True)
class GuidedOutput:
    """The constraint a request asks for: JSON (with a schema or without), one of some
    strings, a regular expression's match or a grammar's sentence; none when all are unset."""

    json_object: bool = False
    schema: dict[str, Any] | None = None
    choices: list[str] | None = None
    regex: str | None = None
    grammar: str | None = None

    @property
    def constrained(self) -> bool:
        return self.json_object or any(
            v is not None for v in (self.choices, self.regex, self.grammar)
        )


# vLLM's StructuredOutputsParams fields that change nothing here: our JSON never has extra
# keys that a schema does not allow, and there is no backend to fall back from.
_STRUCTURED_NEUTRAL = {"disable_fallback", "disable_additional_properties"}
_STRUCTURED_KINDS = ("json", "json_object", "choice", "regex", "grammar")


def _structured_outputs(value: object) -> tuple[str, object]:
    """(which of json, json_object, choice, regex and grammar, its value) of vLLM's
    `structured_outputs`; a 400 for what this server cannot follow (structural_tag,
    whitespace_pattern, ...)."""
    param = "structured_outputs"
    if not isinstance(value, dict):
        raise bad_request(f"{param} must be an object such as {{\"json\": {{...}}}}", param=param)
    kinds = []
    for key, item in value.items():
        if item is None or item is False or key in _STRUCTURED_NEUTRAL:
            continue
        if key not in _STRUCTURED_KINDS:
            raise bad_request(
                f"{param}.{key} is not supported by this server (it follows "
                f"{', '.join(_STRUCTURED_KINDS)})",
                param=param,
            )
        kinds.append(key)
    if len(kinds) != 1:
        raise bad_request(
            f"{param} must ask for exactly one of {', '.join(_STRUCTURED_KINDS)}, got "
            f"{', '.join(kinds) or 'none'}",
            param=param,
        )
    if kinds[0] == "json_object" and value["json_object"] is not True:
        raise bad_request(f"{param}.json_object must be true", param=param)
    return kinds[0], value[kinds[0]]


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema of `response_format: {"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}}` (OpenAI's shape), checked: a 400 names what cannot be enforced."""
    if (response_format or {}).get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")  # type: ignore[union-attr]
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise bad_request(
            'response_format: json_schema needs {"json_schema": {"name": ..., "schema": {...}}}',
            param="response_format",
        )
    return checked_schema(schema, "response_format")


def checked_schema(schema: object, name: str, param: str | None = None) -> dict[str, Any]:
    """`schema`, if the decoder can follow it; a 400 naming `name` and the place otherwise
    (its `param` is `param`, `name` by default)."""
    try:
        compile_schema(schema)
    except SchemaError as exc:
        text = str(exc) if str(exc).startswith("the schema") else f"the schema {exc}"
        raise bad_request(f"{name}: {text}", param=param or name) from exc
    assert isinstance(schema, dict)
    return schema


_TOKEN_ID_KEY = re.compile(r"\s*[0-9]{1,18}\s*")


def logit_bias_of(driver: EngineDriver, asked: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's logit_bias (token ids as strings) as the engine takes it; 400 when a key is not
    a token id of this model or a bias lies outside [-100, 100]."""
    bias: dict[int, float] = {}
    vocab = driver.vocab_size
    for key, value in (asked or {}).items():
        # ASCII digits, few enough for int(): str.isdigit() passes "²" and 5,000-digit keys,
        # both a 500 from int()
        token = int(key) if _TOKEN_ID_KEY.fullmatch(key) else -1
        if not 0 <= token < vocab:
            shown = repr(key) if len(key) <= 40 else f"{key[:40]!r}... ({len(key)} characters)"
            raise bad_request(
                f"logit_bias: {shown} is not a token id of this model (0 to {vocab - 1})",
                param="logit_bias",
            )
        if not -100 <= value <= 100:  # NaN fails this too
            raise bad_request(
                f"logit_bias: the bias of token {key} must be in [-100, 100], got {value}",
                param="logit_bias",
            )
        bias[token] = float(value)
    return bias


def message_text(content: object, index: int) -> str:
    """Message `index`'s content as one text: its text parts joined by newlines, as vLLM joins
    them for a template that reads the content as a string."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for k, part in enumerate(content):  # type: ignore[arg-type]
        if part.type != "text":
            raise bad_request(
                f"messages[{index}].content[{k}]: only text content parts are supported, got "
                f"{part.type!r}",
                param="messages",
            )
        if part.text is None:
            raise bad_request(f"messages[{index}].content[{k}]: a text part needs 'text'",
                              param="messages")  # fmt: skip
        texts.append(part.text)
    return "\n".join(texts)
