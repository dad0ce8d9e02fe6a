"""OpenAI's chat fields that ask for what this server cannot give (audio, web search,
reasoning, moderation, another verbosity): a 400 naming the field, as OpenAI answers for a
model without them, rather than an answer that silently lacks what was asked. The fields that
change nothing in an answer (store, metadata, service_tier, prediction, prompt_cache_key,
safety_identifier, user) are taken."""

from __future__ import annotations

from collections.abc import Callable

from server.errors import bad_request

_TEXT_ONLY = "this server's model writes text only"


def refuse_unhonoured(fields: dict[str, object]) -> None:
    """400 for the first field of `fields` (a chat request's fields OpenAI's API knows and the
    request model does not) that asks for what cannot be given; their neutral values (none,
    modalities ["text"], reasoning_effort "none", verbosity "medium") are taken."""
    for name, why in _WHY.items():
        value = fields.get(name)
        if value is None:
            continue
        reason = why(value)
        if reason is not None:
            raise bad_request(f"{name} is not supported: {reason} (got {value!r})", param=name)


def _modalities(value: object) -> str | None:
    if isinstance(value, list) and all(m == "text" for m in value):
        return None
    return f'{_TEXT_ONLY}: modalities may only be ["text"]'


def _reasoning_effort(value: object) -> str | None:
    if value == "none":
        return None
    return 'the served model does not reason apart from its output (only "none" is taken)'


def _verbosity(value: object) -> str | None:
    if value == "medium":
        return None
    return 'the answer\'s length follows max_completion_tokens only (only "medium" is taken)'


# each field's reason to refuse a value (None: the value is taken)
_WHY: dict[str, Callable[[object], str | None]] = {
    "modalities": _modalities,
    "audio": lambda _: f"{_TEXT_ONLY}, no audio",
    "web_search_options": lambda _: "this server does not search the web",
    "reasoning_effort": _reasoning_effort,
    "verbosity": _verbosity,
    "moderation": lambda _: "this server does not moderate inputs or outputs",
}
