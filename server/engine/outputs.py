"""What the engine reports back."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    """A generated token's natural-log probability under the model, and the most likely
    tokens at its position (most likely first; as many as the request asked for). A prompt
    token's also has its rank (1: the likeliest; ties share the best rank)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    rank: int | None = None


@dataclass(slots=True)
class JobOutput:
    """Progress of one job after a step: the tokens and text it produced since the last report."""

    job_id: int
    context_id: int
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    token_ids: list[int] = field(default_factory=list)  # all generated so far
    text: str = ""  # all generated so far (stop strings removed)
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort"
    error: str | None = None
    new_logprobs: list[TokenLogprob] = field(default_factory=list)  # one per new token, if asked
    # the prompt's, if asked: once, with the first output after the prompt is computed
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # prompt tokens reused rather than computed (see Job.cached_tokens); None until admitted
    cached_tokens: int | None = None
    # with finish_reason "stop": the stop string or stop token id that ended it (None: EOS)
    stop_reason: int | str | None = None


@dataclass(slots=True)
class CompletionOutput:
    """A finished plain request."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None  # one per token, when the sampling asked
    prompt_logprobs: list[TokenLogprob | None] | None = None  # one per prompt token, if asked
    cached_tokens: int = 0  # prompt tokens found computed (the prefix cache), not computed
    stop_reason: int | str | None = None  # the stop string or stop token id (None: EOS)


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started, and the pool's state."""

    prompt_tokens: int = 0  # tokens handed to fill/request (what was asked for)
    prefill_tokens: int = 0  # prompt tokens actually computed
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    generated_tokens: int = 0
    preemptions: int = 0
    # KV tokens (per layer) that decode attention read once for a shared-prefix level instead
    # of once per member: (members - 1) x level tokens, summed over steps
    cascade_saved_tokens: int = 0
    steps: int = 0
    # steps paused between two layers for latency-critical work that arrived meanwhile
    paused_steps: int = 0
    # speculative decoding: drafted tokens a step verified, and those the model confirmed
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    free_blocks: int = 0
    total_blocks: int = 0
    contexts: int = 0  # alive now: held by the server, or a plain request's
    jobs: int = 0  # queued or running now
