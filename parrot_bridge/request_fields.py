"""Request fields beyond a model's own arguments (LangChain's `extra_body`, LlamaIndex's
`additional_kwargs`): checked where they are given, sent as they are in a plain request, and
taken as a semantic call's sampling options where one does the same."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# fields the model sets itself: given here they would replace what the call is
MODEL_SET_FIELDS = ("model", "messages", "prompt", "stream", "stream_options")

# a request body's field (OpenAI's, or vLLM's extension) -> the semantic call's option that
# does the same
SEMANTIC_FIELDS = {
    "max_tokens": "max_tokens",
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "logit_bias": "logit_bias", "top_k": "top_k", "min_p": "min_p",
    "repetition_penalty": "repetition_penalty", "ignore_eos": "ignore_eos",
    "guided_regex": "regex", "guided_grammar": "grammar", "guided_choice": "choices",
    "guided_json": "json_schema",
}  # fmt: skip


def checked_fields(owner: str, name: str, value: Any) -> dict[str, Any]:
    """`value` (None, or a mapping of field names to JSON values) as a dict; ValueError naming
    `owner`, the setting (`name`) and what is wrong otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{owner}: {name} must map field names to values, got {value!r}")
    own = sorted(set(value) & set(MODEL_SET_FIELDS))
    if own:
        raise ValueError(
            f"{owner}: {name} must not set {', '.join(map(repr, own))}: the model sets it "
            "from the call (give it as the model's own argument)"
        )
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{owner}: {name} must hold JSON values: {exc}") from None
    return dict(value)


def semantic_options(
    owner: str, name: str, fields: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """(the semantic call's sampling options that `fields` ask for, the fields that no option
    does)."""
    options: dict[str, Any] = {}
    left = []
    for key, value in fields.items():
        if key not in SEMANTIC_FIELDS:
            left.append(key)
            continue
        if key == "guided_json" and isinstance(value, str):  # vLLM takes a schema's text too
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"{owner}: {name}'s guided_json is not JSON: {exc}") from None
        if key == "stop" and isinstance(value, str):
            value = [value]
        options[SEMANTIC_FIELDS[key]] = value
    return options, left


def no_semantic_option(owner: str, name: str, left: list[str]) -> ValueError:
    """The error of a semantic call asked for fields it has no option for."""
    return ValueError(
        f"{owner} cannot honour {name}'s {', '.join(map(repr, left))}: its semantic calls "
        f"take {', '.join(sorted(SEMANTIC_FIELDS))}"
    )
