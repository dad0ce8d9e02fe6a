"""Bodies of OpenAI's Responses API (`POST /v1/responses`): the request, the response object and
its output items, and the events of a streamed response. Requests ignore fields they do not
know, as OpenAI clients send many optional ones; the handler refuses the known fields it
cannot honour."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.api.openai_models import ChatTokenLogprob

# the one `include` value that changes what this server returns
LOGPROBS_INCLUDE = "message.output_text.logprobs"
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept in model_extra: vLLM's sampling extensions

    model: str
    input: str | list[dict[str, Any]] = Field(
        description="A user message's text, or a list of input items: messages (roles user, "
        "assistant, system, developer; text content), function_call and function_call_output."
    )
    instructions: str | None = Field(
        None, description="A system message before the input; not carried to a response that "
        "follows this one (previous_response_id)."
    )  # fmt: skip
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = Field(
        None, description="`format`: {type: text}, {type: json_object} or {type: json_schema, "
        "name, schema, strict}."
    )  # fmt: skip
    stream: bool = False
    store: bool = Field(True, description="Keep the response, to retrieve it or follow it.")
    previous_response_id: str | None = Field(
        None, description="Continue a stored response: its input and output come before this "
        "input."
    )  # fmt: skip
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=16,
        description="At most 16 pairs, keys of at most 64 characters, values of at most 512 "
        "(OpenAI's bounds); echoed and stored with the response.",
    )  # fmt: skip
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: dict[str, Any] | None = None
    background: bool | None = None
    max_tool_calls: int | None = None
    conversation: Any = None
    prompt: Any = None


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[ChatTokenLogprob] | None = Field(
        None, exclude_if=lambda v: v is None,
        description=f"Each token's, with include [{LOGPROBS_INCLUDE!r}].",
    )  # fmt: skip


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str = Field(description="What the function_call_output that answers it names.")
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it.")
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[OutputMessage | FunctionCallItem, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens whose KV was reused, not computed.")
    # the SDK's type requires it (an int): left out, typed code read None
    cache_write_tokens: int = Field(
        description="Prompt tokens computed (the rest): their KV goes into the cache, whose "
        "full blocks later prompts with the same prefix reuse."
    )


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # the served models do not reason apart from their output


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """A response, as created, retrieved, or carried by a stream's lifecycle events."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool
    temperature: float
    top_p: float
    top_logprobs: int | None = None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False


class InputItemsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `include` changes nothing here

    after: str | None = Field(None, description="List the items after this one.")
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"


class InputItemList(BaseModel):
    """A page of a stored response's input items, each with its id."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseStreamEvent(BaseModel):
    """One event of a streamed response: `event: <type>` then `data:` this object, whose other
    fields are those of its type (OpenAI's): response.created, response.in_progress,
    response.output_item.added, response.content_part.added, response.output_text.delta,
    response.output_text.done, response.content_part.done,
    response.function_call_arguments.delta, response.function_call_arguments.done,
    response.output_item.done, then response.completed or response.incomplete; or error
    then response.failed. No `[DONE]` follows."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int
