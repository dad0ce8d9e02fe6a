"""Contexts (token sequences over KV blocks) and the jobs that run on them."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import torch

from server.engine.block_manager import ParentKey
from server.engine.output_constraint import OutputConstraint
from server.engine.outputs import TokenLogprob
from server.engine.sampling_params import SamplingParams
from server.engine.tokenizer import IncrementalDetokenizer


class JobKind(enum.Enum):
    FILL = "fill"
    GENERATE = "generate"


@dataclass(eq=False)
class Job:
    """One unit of work on a context: compute pending tokens (fill), or also sample (generate)."""

    id: int
    kind: JobKind
    priority: int = 0
    arrival: int = 0
    sampling: SamplingParams | None = None
    free_on_finish: bool = False
    # seconds the engine keeps its latency cap on after this job ends (see Scheduler.hold_latency)
    hold_latency_s: float = 0.0
    # a fill ahead of need: while another latency-critical context generates, compute at most
    # this many tokens a step (None: no limit), riding along its decode steps
    yield_tokens: int | None = None
    fill_token_ids: list[int] = field(default_factory=list)  # appended when the fill starts
    # generation state
    output_token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted_text_len: int = 0
    detokenizer: IncrementalDetokenizer | None = None
    generator: torch.Generator | None = None
    constraint: OutputConstraint | None = None  # what its sampling's output must follow
    # with sampling.prompt_logprobs: entry i scores prompt token i (entry 0 is None), filled as
    # the prompt's chunks are computed; sent once, with the job's first output after them
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=lambda: [None])
    prompt_logprobs_sent: bool = False
    finish_reason: str | None = None
    # what ended a "stop": the stop string or stop token id (None: EOS, or not stopped)
    stop_reason: int | str | None = None
    error: str | None = None
    # prompt tokens computed before its first step (prefix-cache hits, a fork parent's blocks,
    # a fill ahead of it), as vLLM's num_cached_tokens; a recomputation keeps the count
    cached_tokens: int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.sampling is not None and self.sampling.prompt_logprobs is not None

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.arrival)


class ContextState(enum.Enum):
    IDLE = "idle"  # no job: holds its blocks, may be swapped out under pressure
    WAITING = "waiting"  # has a job, holds no running slot
    RUNNING = "running"


@dataclass(eq=False)
class Context:
    """A token sequence and the KV blocks that hold it.

    `token_ids[:num_computed]` have their K/V in `block_table`; the rest are pending. The
    first `len(block_hashes)` blocks are full and their content hashes are known. A context
    with a `cache_salt` (vLLM's, per request; its forks keep it) chains its first block's hash
    from the salt, so it shares cached blocks only with contexts of the same salt.
    """

    id: int
    token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_computed: int = 0
    jobs: deque[Job] = field(default_factory=deque)
    state: ContextState = ContextState.IDLE
    last_used: int = 0
    # the last `num_drafts` of token_ids are drafted, not generated: a step verifies them and
    # the engine takes them out again (speculative decoding)
    num_drafts: int = 0
    cache_salt: str | None = None

    @property
    def last_hash(self) -> ParentKey:
        """What the next full block's hash chains from: the last one's, else the salt."""
        return self.block_hashes[-1] if self.block_hashes else self.cache_salt

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None

    @property
    def sort_key(self) -> tuple[int, int]:
        job = self.job
        return job.sort_key if job is not None else (0, 0)

    @property
    def sampling_job(self) -> Job | None:
        """The generation that samples once the pending tokens are computed: the head job, or
        the one right after a head fill (so a fill then generate needs no recomputation)."""
        if not self.jobs:
            return None
        head = self.jobs[0]
        if head.kind is JobKind.GENERATE:
            return head
        if len(self.jobs) > 1 and self.jobs[1].kind is JobKind.GENERATE:
            return self.jobs[1]
        return None

    @property
    def queued_len(self) -> int:
        """Tokens the context will hold once its queued fills have started."""
        return len(self.token_ids) + sum(
            len(j.fill_token_ids) for j in list(self.jobs)[1:] if j.kind is JobKind.FILL
        )
