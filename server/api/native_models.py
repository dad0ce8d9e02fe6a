"""Request and response bodies of the native API (`/v1/sessions/...`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.api.openai_models import PromptTokensDetails
from server.engine.sampling_params import SEED_MAX, SEED_MIN

Criteria = Literal["latency", "throughput"]


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionCreate(ApiModel):
    name: str | None = Field(None, max_length=200, description="A label for logs.")


class SessionCreated(ApiModel):
    session_id: str
    token: str = Field(description="Send as 'Authorization: Bearer <token>' on session routes.")
    model: str


class SessionInfo(ApiModel):
    session_id: str
    name: str | None
    created: float
    variables: int
    calls: dict[str, int] = Field(description="Number of calls in each state.")


class SessionClosed(ApiModel):
    session_id: str
    closed: bool = True


class SamplingSpec(ApiModel):
    max_tokens: int = Field(128, ge=1, description="Per output variable.")
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(-1, ge=-1, description="-1 or 0 disables top-k (vLLM's rule).")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] = Field(
        default_factory=dict,
        description="Token id (ASCII digits) -> bias in [-100, 100], as OpenAI's.",
    )
    json_schema: dict[str, Any] | None = Field(
        None,
        description="Each output is a JSON object this schema allows ({\"type\": \"object\"}: "
        "any object); it ends when the object closes. See the README for the schemas.",
    )
    choices: list[str] | None = Field(
        None, description="Each output is exactly one of these strings."
    )
    regex: str | None = Field(
        None, description="Each output matches this regular expression whole (see the README)."
    )
    grammar: str | None = Field(
        None,
        description="Each output is a sentence of this GBNF grammar (llama.cpp's notation), "
        "from its rule root (see the README).",
    )
    min_p: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="vLLM's min-p.")
    repetition_penalty: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="vLLM's, over the whole context."
    )


class VariableSpec(ApiModel):
    id: str = Field(description="Chosen by the client, unique in the session.")
    name: str | None = None
    value: str | None = Field(
        None,
        description="Given for inputs set by the client. Without it (and with no call writing "
        "it) the variable is the client's to set later: calls reading it wait until "
        "PUT /v1/sessions/{session_id}/variables/{id} gives its value.",
    )


class CallSpec(ApiModel):
    id: str = Field(description="Chosen by the client, unique in the session.")
    function: str | None = Field(None, description="The semantic function's name, for messages.")
    template: str = Field(
        description="Text with {{input:name}} and {{output:name}} markers. An input marker may "
        "name a transform of the value it inserts: {{input:name|strip}} drops leading and "
        "trailing whitespace (the variable's value is unchanged). Other transforms are rejected."
    )
    inputs: dict[str, str] = Field(default_factory=dict, description="Input name -> variable id.")
    outputs: dict[str, str] = Field(description="Output name -> variable id.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    add_special_tokens: bool = Field(
        True,
        description="The prompt starts with the tokenizer's special tokens (BOS) where it adds "
        "them, as a completion's does; false for a prompt a chat template rendered, which "
        "writes its own (as the chat API tokenizes it).",
    )


class AwaitSpec(ApiModel):
    variable: str
    criteria: Criteria = "latency"


class GraphSubmission(ApiModel):
    """New variables and calls, applied atomically, and the variables the client will await."""

    variables: list[VariableSpec] = Field(default_factory=list)
    calls: list[CallSpec] = Field(default_factory=list)
    awaits: list[AwaitSpec] = Field(default_factory=list)


class SubmissionResult(ApiModel):
    session_id: str
    variables: int
    calls: int
    ready_calls: list[str] = Field(description="Calls that started at once.")
    failed_calls: dict[str, str] = Field(
        default_factory=dict,
        description="Calls failed at once (their outputs and dependents too), by id: why. A "
        "call whose sampling options cannot be followed fails alone; the rest is applied.",
    )


class VariableCreate(ApiModel):
    id: str | None = Field(None, description="Generated when omitted.")
    name: str | None = None
    value: str | None = None


class VariableSet(ApiModel):
    value: str


class TokenUsage(ApiModel):
    """What generating an output cost, as an OpenAI completion reports it."""

    prompt_tokens: int = Field(description="The call's prompt up to this output.")
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(
        description="`cached_tokens`: prompt tokens computed before the call's generation "
        "began (shared from a fork's prefix, found in the prefix cache, or filled ahead)."
    )


class VariableInfo(ApiModel):
    id: str
    name: str | None
    status: Literal["pending", "ready", "failed"]
    value: str | None = None
    error: str | None = None
    producer: str | None = Field(None, description="The call that writes it.")
    usage: TokenUsage | None = Field(None, description="For an output a call generated.")
    finish_reason: Literal["stop", "length"] | None = Field(
        None, description="For an output a call generated: EOS or a stop string, or max_tokens."
    )
    message: str | None = Field(
        None,
        description="For a variable still pending when a read's wait ended: why it has no value "
        "yet, where the server can tell (a variable upstream that the client has not set).",
    )


class VariableQuery(ApiModel):
    criteria: Criteria | None = Field(None, description="The objective of this wait.")
    timeout: float = Field(30.0, ge=0, le=300, description="Seconds to wait for the value.")


class StreamQuery(ApiModel):
    criteria: Criteria | None = None


class StreamChunk(ApiModel):
    """`event: chunk` of a variable's stream; `event: done` carries a VariableInfo and
    `event: error` an ErrorResponse."""

    text: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(ApiModel):
    status: Literal["ok"]
    model: str
    max_model_len: int
    sessions: int
    engines: int
    engines_running: int = Field(
        description="engines taking work; the others died and are being restarted, or are down"
    )
