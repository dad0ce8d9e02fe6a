"""Bodies of the OpenAI-compatible API. Requests ignore fields they do not know, as OpenAI
clients send many optional ones; fields we cannot honour are rejected by the handlers (vLLM's
extensions among them: the handlers see the unknown fields in `model_extra`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from server.engine.sampling_params import SEED_MAX, SEED_MIN


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        False, description="vLLM's: with include_usage, every chunk carries its choice's usage."
    )


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept in model_extra, to refuse vLLM's we lack

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int | None = Field(None, ge=1, le=128)  # samples per prompt; they share its KV
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    # completions: how many alternatives per token (0-20); chat: whether to return them
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    response_format: dict[str, Any] | None = None  # {"type": "text"} or "json_object" only
    user: str | None = None
    # vLLM's sampling extensions that the engine has (clients send them in extra_body)
    top_k: int | None = Field(None, ge=-1, description="vLLM's: -1 or 0 disables top-k.")
    stop_token_ids: list[int] | None = Field(None, description="vLLM's: token ids that stop.")
    ignore_eos: bool = Field(False, description="vLLM's: go on past EOS, up to max_tokens.")
    min_p: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False,
        description="vLLM's: keep tokens at least this fraction as likely as the likeliest.",
    )  # fmt: skip
    repetition_penalty: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="vLLM's: > 1 discourages tokens already in the prompt or the output.",
    )  # fmt: skip
    min_tokens: int | None = Field(
        None, ge=0, description="vLLM's: no EOS, stop id or stop string before this many."
    )
    include_stop_str_in_output: bool = Field(
        False, description="vLLM's: the text keeps the stop string (or stop token) that ended it."
    )
    skip_special_tokens: bool = Field(
        True, description="vLLM's: false keeps special tokens' text (e.g. <|im_start|>)."
    )
    allowed_token_ids: list[int] | None = Field(
        None, description="vLLM's: only these token ids are generated."
    )
    bad_words: list[str] | None = Field(
        None, description="vLLM's: words never generated (as written, and after a space)."
    )
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="vLLM's: keep the prompt's last k tokens (-1: what fits)."
    )
    priority: int = Field(
        0,
        description="vLLM's: lower goes first. Parrot has three classes: below 0 "
        "latency-critical, 0 normal, above 0 bulk (it yields to the others).",
    )
    prompt_logprobs: int | None = Field(
        None, ge=0, le=20,
        description="vLLM's: each prompt token's logprob and rank, and this many alternatives "
        "(not streamed; n=1).",
    )  # fmt: skip
    return_tokens_as_token_ids: bool = Field(
        False,
        description="vLLM's: logprobs write every token (chosen and alternatives, an echoed "
        "prompt's too) as 'token_id:{id}', so tokens that are not whole characters can be told "
        "apart; chat's bytes stay each token's own.",
    )
    return_token_ids: bool = Field(
        False,
        description="vLLM's: the response carries the prompt's token ids as the engine took "
        "them (prompt_token_ids) and each choice's generated ids, a stop token included "
        "(token_ids); streamed, each chunk has the ids generated since the choice's last one.",
    )
    cache_salt: str | None = Field(
        None, min_length=1,
        description="vLLM's: the request reuses only prefix-cached KV computed by requests "
        "with the same salt (none: by unsalted ones), so tenants cannot time each other's "
        "prompts.",
    )  # fmt: skip


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


class CompletionRequest(OpenAIRequest):
    # text, texts, token ids or lists of token ids, as OpenAI's API (and vLLM) take it
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0: with echo, score the prompt only
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    add_special_tokens: bool = Field(
        True,
        description="vLLM's: a text prompt starts with the tokenizer's special tokens (BOS), "
        "as Hugging Face tokenizes it.",
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: object) -> object:
        if not (
            isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(p, str) for p in value))
            or _token_ids(value)
            or (isinstance(value, list) and all(_token_ids(p) for p in value))
        ):
            raise ValueError(
                "prompt must be a string, a list of strings, a list of token ids or a list of "
                "lists of token ids"
            )
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # passed to the chat template, as vLLM does
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's past calls
    tool_call_id: str | None = None  # a tool message's call


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict] | None = None
    function_call: str | dict[str, Any] | None = None
    # vLLM's chat template extensions
    add_generation_prompt: bool = Field(
        True, description="vLLM's: end the prompt with the template's assistant header."
    )
    continue_final_message: bool = Field(
        False,
        description="vLLM's: the prompt ends inside the final (assistant) message, which the "
        "completion continues; takes add_generation_prompt false.",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="vLLM's: more variables for the chat template."
    )
    add_special_tokens: bool = Field(
        False,
        description="vLLM's: add the tokenizer's special tokens (BOS) before the rendered "
        "prompt; off, as the chat template writes its own.",
    )
    echo: bool = Field(
        False,
        description="vLLM's: the answer starts with the final message's content when that "
        "message has the answer's role (with continue_final_message, say).",
    )


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        description="Prompt tokens whose KV came from the prefix cache, not computed."
    )


class Usage(BaseModel):
    """A prompt and the tokens it took from the prefix cache count once, however many samples
    (`n`) fork it."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    """Per token of the choice's text (the echoed prompt's too): its text, natural-log
    probability, the most likely alternatives (text -> logprob) and where its text starts.
    The first prompt token has no probability (null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class PromptLogprob(BaseModel):
    """vLLM's: a prompt token's (or an alternative's) logprob, its rank among all tokens (1:
    the likeliest) and its text."""

    logprob: float
    rank: int | None
    decoded_token: str


PromptLogprobs = list[dict[str, PromptLogprob] | None]


def _stop_reason_field() -> Any:
    return Field(
        None,
        description="vLLM's: the request's stop string or stop token id that ended the choice; "
        "null for EOS, a length cut, or a choice not yet finished.",
    )


def _is_none(value: object) -> bool:
    return value is None


def _unless_asked(description: str | None = None) -> Any:
    """A response field left out when None (not asked for, or nothing to say: OpenAI leaves
    out a message's tool_calls when there are none); unlike a model serializer that drops it,
    the schema still lists the model's fields."""
    return Field(None, description=description, exclude_if=_is_none)


class CompletionChoice(BaseModel):
    """`prompt_logprobs`, `prompt_token_ids` and `token_ids` (vLLM's) are left out unless
    asked for."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None
    stop_reason: int | str | None = _stop_reason_field()
    prompt_logprobs: PromptLogprobs | None = _unless_asked()
    prompt_token_ids: list[int] | None = _unless_asked(
        "vLLM's (return_token_ids): the choice's prompt as the engine took it; streamed, in "
        "the choice's first chunk only."
    )
    token_ids: list[int] | None = _unless_asked(
        "vLLM's (return_token_ids): the ids generated (not an echoed prompt's), a stop token "
        "included; streamed, those since the choice's previous chunk."
    )


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    """`content` is null when the answer is tool calls only; `tool_calls` is left out when
    there are none."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = _unless_asked()


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


def _generated_ids_field() -> Any:
    return _unless_asked(
        "vLLM's (return_token_ids): the ids generated, a stop token included; streamed, those "
        "since the choice's previous chunk."
    )


def _chat_prompt_ids_field() -> Any:
    return _unless_asked(
        "vLLM's (return_token_ids): the prompt as the engine took it (the rendered chat "
        "template's tokens); streamed, in each choice's role chunk."
    )


class ChatChoice(BaseModel):
    """`token_ids` (vLLM's) is left out unless asked for."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    stop_reason: int | str | None = _stop_reason_field()
    token_ids: list[int] | None = _generated_ids_field()


class ChatCompletion(BaseModel):
    """`prompt_logprobs` and `prompt_token_ids` (vLLM's) are left out unless asked for."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: PromptLogprobs | None = _unless_asked()
    prompt_token_ids: list[int] | None = _chat_prompt_ids_field()


class ToolCallDelta(ToolCall):
    """A streamed call, sent whole once its block has closed."""

    index: int


class ChatDelta(BaseModel):
    """Fields left None are left out, as OpenAI sends them (role only in the first delta)."""

    role: Literal["assistant"] | None = _unless_asked()
    content: str | None = _unless_asked()
    tool_calls: list[ToolCallDelta] | None = _unless_asked()


class ChatChunkChoice(BaseModel):
    """`token_ids` (vLLM's) is left out unless asked for."""

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    stop_reason: int | str | None = _stop_reason_field()
    token_ids: list[int] | None = _generated_ids_field()


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = _chat_prompt_ids_field()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "parrot"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
