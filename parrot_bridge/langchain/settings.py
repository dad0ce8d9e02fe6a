"""Settings shared by ChatParrot and ParrotLLM: the server, the model and sampling defaults."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from langchain_core.language_models import LangSmithParams
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from parrot_bridge.langchain.http import ServerHttp
from parrot_bridge.langchain.response_format import checked_response_format
from parrot_bridge.loop_thread import shared_loop
from parrot_bridge.request_fields import checked_fields
from parrot_bridge.server_url import server_root

DEFAULT_URL = "http://127.0.0.1:9000"


class ParrotSettings(BaseModel):
    """Fields of both model classes; per-call keyword arguments override the sampling ones."""

    model_config = ConfigDict(populate_by_name=True)

    base_url: str = Field(DEFAULT_URL, description="The server's root, e.g. http://host:9000.")
    model_name: str | None = Field(None, alias="model", description="None: the served model.")
    temperature: float | None = Field(None, ge=0, le=2, description="None: the server's (1.0).")
    max_tokens: int | None = Field(None, ge=1, description="None: up to the context's end.")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name.")
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[str] | None = Field(None, alias="stop_sequences")
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More sampling options, as per-call arguments."
    )
    extra_body: dict[str, Any] | None = Field(
        None, description="Request fields beyond OpenAI's (top_k, min_p, guided_regex, ...)."
    )
    timeout: float | None = Field(None, gt=0, description="Seconds per request; None: no limit.")
    max_retries: int = Field(2, ge=0, description="Retries when the server cannot be reached.")
    api_key: SecretStr | None = Field(
        None, description="The server's --api-key, if it has one (sent as a bearer token)."
    )
    # (base_url, model name) -> (served id, context length): another server is asked again
    _cards: dict[tuple[str, str | None], tuple[str, int]] = PrivateAttr(default_factory=dict)
    ls_model_type: ClassVar[Literal["chat", "llm"]]
    # option -> its name in the request body: the options this model's requests can carry
    request_options: ClassVar[dict[str, str]]
    # per-call arguments that are not request options (they shape the call itself)
    call_arguments: ClassVar[frozenset[str]] = frozenset({"model", "extra_body"})

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return server_root(value, "base_url")  # ChatOpenAI's ".../v1" too

    @model_validator(mode="after")
    def _check_stop(self) -> ParrotSettings:
        if self.stop is not None and any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        # (a class's own default max_tokens, ParrotLLM's 256, gives way to max_completion_tokens)
        if (self.max_completion_tokens is not None and self.max_tokens is not None
                and "max_tokens" in self.model_fields_set):  # fmt: skip
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        _check_options(type(self), self.model_kwargs)
        for key, value in self.model_kwargs.items():  # values too: a bad one fails here
            if key in self.request_options:
                _checked(type(self), key, value)
        self._extra_body({})
        return self

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = {"base_url": self.base_url, "model": self.model_name, **self._sampling(None, {})}
        extra = self._extra_body({})
        return {**params, "extra_body": extra} if extra else params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="parrot",
            ls_model_name=kwargs.get("model") or self.model_name or "parrot",
            ls_model_type=self.ls_model_type,
        )
        sampling = self._sampling(stop, without_tool_options(kwargs))
        for key in ("temperature", "max_tokens", "stop"):
            if key in sampling:
                params[f"ls_{key}"] = sampling[key]  # type: ignore[literal-required]
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """`text`'s token ids by the served model's tokenizer (the server's `/tokenize`), not
        LangChain's GPT-2 default, which counts another vocabulary (and nothing offline)."""
        body: dict[str, Any] = {"prompt": text}
        if self.model_name:
            body["model"] = self.model_name
        return shared_loop().run(self._http().request("POST", "/tokenize", body))["tokens"]

    def _http(self) -> ServerHttp:
        return ServerHttp(self.base_url, self.timeout, self.max_retries, self._key())

    def _key(self) -> str | None:
        return None if self.api_key is None else self.api_key.get_secret_value()

    def _sampling(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The sampling of one call: fields, `model_kwargs`, then per-call keyword arguments;
        None left out. An option the server cannot honour raises ValueError."""
        merged = {
            "temperature": self.temperature,
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "stop": stop if stop is not None else self.stop,
        }
        for key in CHAT_ONLY_OPTIONS:  # the chat model's fields
            if key in type(self).model_fields:
                merged[key] = getattr(self, key)
        for options in (self.model_kwargs, kwargs):
            _check_options(type(self), options)
            for key, value in options.items():
                if key in self.request_options:
                    merged[self.request_options[key]] = _checked(type(self), key, value)
        if isinstance(merged["stop"], str):
            merged["stop"] = [merged["stop"]]
        return {k: v for k, v in merged.items() if v is not None and v != []}

    def _extra_body(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's extra_body: the field's, then model_kwargs' and the call's fields over
        it. A value that is not a mapping of JSON values raises ValueError."""
        name = type(self).__name__
        merged: dict[str, Any] = {}
        for source in (self.extra_body, self.model_kwargs.get("extra_body"),
                       kwargs.get("extra_body")):  # fmt: skip
            merged.update(checked_fields(name, "extra_body", source))
        return merged

    def _model_id(self, kwargs: dict[str, Any]) -> str:
        """The model to name in requests: per call, the field, else the served one."""
        return kwargs.get("model") or self.model_name or self._server_info()[0]

    async def _amodel_id(self, kwargs: dict[str, Any]) -> str:
        """`_model_id` for async paths: a lookup must not block the caller's event loop."""
        return kwargs.get("model") or self.model_name or (await self._aserver_info())[0]

    def _server_info(self, model: str | None = None) -> tuple[str, int]:
        """(the served model's id, its context length), asked once per server and name. A `model` the
        server does not serve raises its 404 (model_not_found), as a request naming it would."""
        key = (self.base_url, model)
        if key not in self._cards:
            card = shared_loop().run(self._http().request("GET", _models_path(model)))
            self._cards[key] = _card(card)
        return self._cards[key]

    async def _aserver_info(self, model: str | None = None) -> tuple[str, int]:
        key = (self.base_url, model)
        if key not in self._cards:
            card = await shared_loop().arun(self._http().request("GET", _models_path(model)))
            self._cards[key] = _card(card)
        return self._cards[key]


def _models_path(model: str | None) -> str:
    # the server's own rule decides which names it serves (ids are often paths: quote "/")
    return "/v1/models" if model is None else "/v1/models/" + quote(model, safe="")


def _card(response: dict[str, Any]) -> tuple[str, int]:
    card = response["data"][0] if "data" in response else response
    return card["id"], card["max_model_len"]


# a chat model's tool options (`bind_tools`): sent by plain calls, refused inside compile
TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")


def without_tool_options(options: dict[str, Any]) -> dict[str, Any]:
    return without_options(options, TOOL_OPTIONS)


def without_options(options: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in keys}


# option -> its name in the request body; `model` picks the model (see `_model_id`)
SAMPLING_OPTIONS = {
    "temperature": "temperature", "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens", "top_p": "top_p", "seed": "seed", "stop": "stop",
    "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
    "logit_bias": "logit_bias", "response_format": "response_format",
}  # fmt: skip


def _checked(cls: type[ParrotSettings], key: str, value: Any) -> Any:
    """A per-call option held to its field's bounds (temperature <= 2, say), as the field is:
    the same value refused at construction is refused per call, whichever path sends it."""
    if key == "response_format":
        return checked_response_format(cls.__name__, value)
    field = cls.model_fields.get(key)
    if field is None or value is None or key == "stop":
        return value
    try:
        return _adapter(cls, key).validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(f"{cls.__name__}: {key}={value!r} is refused: {reason}") from None


@functools.cache
def _adapter(cls: type[ParrotSettings], key: str) -> TypeAdapter[Any]:
    field = cls.model_fields[key]
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[field.annotation, *field.metadata])


# a chat request's options that semantic calls (ParrotLLM's, compiled chains') do not take:
# their outputs are one sample each, without logprobs
CHAT_ONLY_OPTIONS = {"logprobs": "logprobs", "top_logprobs": "top_logprobs", "n": "n"}


def _check_options(cls: type[ParrotSettings], options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(cls.request_options) - cls.call_arguments)
    if unknown:
        # plain chat calls send bind_tools' options apart: here they reached a semantic call
        tools = " (semantic calls, as in compile(), take no tools)" * bool(
            set(unknown) & set(TOOL_OPTIONS)
        )
        raise ValueError(
            f"{cls.__name__} cannot honour {', '.join(map(repr, unknown))}: the options it "
            f"sends are {sorted(cls.request_options)}{tools}; fields beyond OpenAI's "
            "(top_k, min_p, guided_regex, ...) go in extra_body"
        )
