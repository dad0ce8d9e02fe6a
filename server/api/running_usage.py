"""vLLM's and SGLang's `stream_options.continuous_usage_stats`: with `include_usage`, every
chunk of a stream carries its choice's usage so far, not only the last chunk the whole's."""

from __future__ import annotations

from server.api.openai_models import PromptTokensDetails, StreamOptions, Usage
from server.engine import JobOutput


class RunningUsage:
    """The tokens each choice of a stream has generated so far and the prompt tokens it found
    cached; `of` is a chunk's usage, None unless the request asked for it."""

    def __init__(self, options: StreamOptions | None, choices: int) -> None:
        self.on = bool(options and options.include_usage and options.continuous_usage_stats)
        self._generated = [0] * choices
        self._cached = [0] * choices

    def add(self, index: int, out: JobOutput) -> None:
        """Count what `out` (an output of choice `index`) brought."""
        self._generated[index] += len(out.new_token_ids)
        if out.cached_tokens is not None:
            self._cached[index] = out.cached_tokens

    def of(self, index: int, prompt_tokens: int) -> Usage | None:
        """The usage of choice `index` so far, for a chunk of it (None: not asked)."""
        if not self.on:
            return None
        done = self._generated[index]
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=done,
                     total_tokens=prompt_tokens + done,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=self._cached[index]))  # fmt: skip
