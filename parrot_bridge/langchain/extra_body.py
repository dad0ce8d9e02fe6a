"""`extra_body`, as OpenAI's clients take it: request fields beyond OpenAI's, which vLLM-style
servers read (Parrot's: top_k, min_p, repetition_penalty, ignore_eos, guided_regex, priority,
cache_salt, ...). A plain chat request carries them as they are, over its own fields; a
semantic call (ParrotLLM's, a compiled chain's) takes those it has an option for."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# fields the model sets itself: in extra_body they would replace what the call is
_OWN = ("model", "messages", "prompt", "stream", "stream_options")

# extra_body field -> the semantic call's sampling option that does the same
SEMANTIC_FIELDS = {
    "top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos", "guided_regex": "regex", "guided_grammar": "grammar",
    "guided_choice": "choices", "guided_json": "json_schema",
}  # fmt: skip


def checked_extra_body(owner: str, value: Any) -> dict[str, Any]:
    """`value` (None, or a mapping of field names to JSON values) as a dict; ValueError naming
    `owner` and what is wrong otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{owner}: extra_body must map field names to values, got {value!r}")
    own = sorted(set(value) & set(_OWN))
    if own:
        raise ValueError(
            f"{owner}: extra_body must not set {', '.join(map(repr, own))}: the model sets "
            "it from the call (give it as the model's own argument)"
        )
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{owner}: extra_body must hold JSON values: {exc}") from None
    return dict(value)


def semantic_extras(owner: str, extra: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the semantic call's sampling options that `extra` asks for, the fields of `extra` that
    no semantic option does)."""
    options: dict[str, Any] = {}
    left = []
    for key, value in extra.items():
        if key not in SEMANTIC_FIELDS:
            left.append(key)
            continue
        if key == "guided_json" and isinstance(value, str):  # vLLM takes a schema's text too
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"{owner}: extra_body's guided_json is not JSON: {exc}") from None
        options[SEMANTIC_FIELDS[key]] = value
    return options, left


def no_semantic_option(owner: str, left: list[str]) -> ValueError:
    """The error of a semantic call asked for extra_body fields it has no option for."""
    return ValueError(
        f"{owner} cannot honour extra_body's {', '.join(map(repr, left))}: its semantic calls "
        f"take {', '.join(sorted(SEMANTIC_FIELDS))}"
    )
