"""A response's token usage as LlamaIndex's OpenAI LLM puts it in `additional_kwargs`."""

from __future__ import annotations

from typing import Any

__all__ = ["token_counts"]

_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def token_counts(data: dict[str, Any] | None) -> dict[str, int]:
    """`data`'s `usage` counts (a response, a chunk or a variable's info); {} where it has
    none (a stream's chunks unless `stream_options.include_usage` asks for it on the last)."""
    usage = (data or {}).get("usage")
    if not isinstance(usage, dict):
        return {}
    return {k: usage.get(k, 0) for k in _COUNTS}
