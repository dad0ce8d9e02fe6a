"""The engine: contexts over a paged KV cache, driven one continuous-batching step at a time."""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from server.engine.block_manager import BlockManager
from server.engine.cache_salt import check_cache_salt
from server.engine.config import EngineConfig
from server.engine.context import Context, Job, JobKind
from server.engine.device import resolve_device
from server.engine.dtype_name import parse_dtype
from server.engine.model_runner import ModelRunner
from server.engine.models import ModelConfig
from server.engine.ngram_drafts import ngram_drafts
from server.engine.output_constraint import (
    OutputConstraint,
    TokenTable,
    text_constraint,
    token_table,
)
from server.engine.outputs import CompletionOutput, EngineStats, JobOutput, TokenLogprob
from server.engine.sampler import sample
from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import ScheduledContext, Scheduler, SchedulerOutput
from server.engine.step_run import StepRun
from server.kernels import cpu

log = logging.getLogger(__name__)


class LLMEngine:
    """A Llama-family model serving contexts.

    Context primitives (what the server drives): `create_context(parent)` forks when given a
    parent, `fill(ctx, token_ids)` appends and computes tokens, `add_generate(ctx, sampling)`
    appends sampled tokens, `truncate`, `free`. Plain requests (`add_request`, `generate`) are a
    context with one generate job, freed when it finishes. Nothing here is thread-safe but
    `request_pause`: one thread calls the rest (see `AsyncLLMEngine`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        model_config: ModelConfig,
        config: EngineConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        name: str = "model",
    ) -> None:
        self.config = config or EngineConfig()
        self.model_name = name
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.device = torch.device(device)
        # the model's own limit: its positions, or less where it runs only part exactly (a
        # sliding window: ModelConfig.max_model_len)
        model_limit = model_config.max_model_len
        self.max_model_len = min(self.config.max_model_len or model_limit, model_limit)
        if self.config.max_model_len and self.config.max_model_len > model_limit:
            log.warning(
                "max_model_len %d is more than this model computes exactly; using %d",
                self.config.max_model_len, model_limit,
            )
        self.runner = ModelRunner(
            model,
            model_config.num_layers,
            model_config.num_heads,
            model_config.num_kv_heads,
            model_config.head_dim,
            self.max_model_len,
            self.config,
            self.device,
            dtype,
        )
        # a context never holds more than the pool: requests past it are refused up front
        self.max_model_len = min(self.max_model_len, self.runner.num_blocks * self.config.block_size)
        self.blocks = BlockManager(
            self.runner.num_blocks, self.config.block_size, self.config.enable_prefix_cache
        )
        self.scheduler = Scheduler(self.config, self.blocks)
        self.eos_token_ids = frozenset(tokenizer.eos_token_ids)
        self._stats = EngineStats(total_blocks=self.runner.num_blocks)
        self._context_ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._arrivals = itertools.count()
        self._jobs: dict[int, Job] = {}
        self._pending_outputs: list[JobOutput] = []
        self._held = False  # the last step ran nothing: a latency hold kept waiting work out
        # set from any thread by request_pause(); the decoder stack reads it between layers
        self._pause_flag = ctypes.c_int(0)
        self._paused: _PausedStep | None = None  # a step stopped between layers, to go on
        self._drafting: list[Context] = []  # contexts holding drafted tokens this step
        self._cut_drafts: set[int] = set()  # contexts whose drafts the last step cut short

    @functools.cached_property
    def _token_table(self) -> TokenTable:
        """Every token's bytes, for constrained generation (built on first use: 0.08 s for
        SmolLM2's 49k tokens)."""
        return token_table(self.tokenizer, self.eos_token_ids)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        **config: Any,
    ) -> LLMEngine:
        """Load a registered name, a Hugging Face folder or a GGUF file; `config` sets EngineConfig.
        `device` "auto": CUDA when torch sees a GPU, else the CPU."""
        from server.engine.loader import load_model

        device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = parse_dtype(dtype)
        engine_config = EngineConfig(**config)
        loaded = load_model(
            name_or_path,
            device=device,
            dtype=dtype,
            packed_linear=_packed_linear(engine_config.packed_linear, device),
            fused_layers=engine_config.fused_layers,
            quantized_linear=engine_config.quantized_linear,
        )
        model_dtype = next(loaded.model.parameters()).dtype
        return cls(
            loaded.model,
            loaded.tokenizer,
            loaded.config,
            engine_config,
            device=device,
            dtype=model_dtype,
            name=loaded.name,
        )

    # ---- contexts -------------------------------------------------------------------------
    def new_context_id(self) -> int:
        """Reserve an id (safe from any thread); `create_context(..., context_id=)` uses it."""
        return next(self._context_ids)

    def create_context(
        self,
        parent: int | None = None,
        context_id: int | None = None,
        cache_salt: str | None = None,
    ) -> int:
        """A new empty context, or a fork sharing all of `parent`'s computed KV blocks.

        `cache_salt` (vLLM's): the context shares cached KV blocks only with contexts of the
        same salt (None: with the unsalted ones). A fork keeps its parent's salt.
        """
        check_cache_salt(cache_salt, parent)
        context_id = context_id if context_id is not None else self.new_context_id()
        if parent is not None:
            parent_ctx = self._context(parent)
            self._settle(parent_ctx)  # a fork copies the block table the paused step fills
            return self.scheduler.fork(parent_ctx, context_id).id
        self.scheduler.add_context(Context(context_id, cache_salt=cache_salt))
        return context_id

    def fill(
        self,
        context_id: int,
        token_ids: Sequence[int],
        priority: int = 0,
        yield_tokens: int | None = None,
    ) -> int:
        """Append tokens to a context and compute their KV; returns the job id.

        `yield_tokens`: for a fill ahead of need (a prefix whose call is not ready yet), at
        most this many tokens a step while another latency-critical context generates, so the
        fill rides along its decode steps instead of stalling them.
        """
        if yield_tokens is not None and yield_tokens < 1:
            raise ValueError(f"yield_tokens must be >= 1 (or None), got {yield_tokens}")
        ctx = self._context(context_id)
        tokens = self._checked_tokens(ctx, token_ids)
        self._stats.prompt_tokens += len(tokens)
        job = Job(next(self._job_ids), JobKind.FILL, priority, fill_token_ids=tokens)
        job.yield_tokens = yield_tokens
        return self._add_job(ctx, job)

    def boost(self, context_id: int, priority: int) -> None:
        """Run the context's jobs at `priority` at the latest, and its fills at full speed (no
        `yield_tokens`): work more urgent than theirs waits on them now (a latency-critical
        call forking a prefix that a fill ahead of need is computing; a call whose output the
        client awaits since it started), and would otherwise wait behind everything their
        own priority yields to. A context already freed is left alone."""
        ctx = self.scheduler.contexts.get(context_id)
        if ctx is None:
            return
        self._settle(ctx)
        for job in ctx.jobs:
            if job.priority > priority:
                job.priority = priority
                if job.kind is JobKind.FILL:
                    job.yield_tokens = None
        self.scheduler.rerank(ctx)

    def add_generate(
        self,
        context_id: int,
        sampling: SamplingParams,
        priority: int = 0,
        free_on_finish: bool = False,
        hold_latency_s: float = 0.0,
    ) -> int:
        """Sample tokens onto the end of a context; returns the job id.

        `hold_latency_s`: when this (latency-critical) job ends, keep the latency cap on that
        long, for the latency-critical call that reads its output to arrive.
        """
        ctx = self._context(context_id)
        if sampling.prompt_logprobs is not None and (ctx.num_computed or ctx.jobs):
            # entry i scores token i, so this job must compute every token from the first
            raise ValueError(
                f"prompt_logprobs needs a context with nothing computed or queued (a plain "
                f"request); context {context_id} has {ctx.num_computed} tokens computed and "
                f"{len(ctx.jobs)} jobs queued"
            )
        length = ctx.queued_len + sum(
            j.sampling.max_tokens for j in ctx.jobs if j.sampling is not None
        )
        if length == 0:
            raise ValueError(f"context {context_id} is empty: fill it before generating")
        if length >= self.max_model_len:
            raise ValueError(
                f"context {context_id} will hold up to {length} tokens, "
                f"max_model_len is {self.max_model_len}"
            )
        vocab = self.model_config.vocab_size
        for name, ids in (
            ("logit_bias", sampling.logit_bias),
            ("allowed_token_ids", sampling.allowed_token_ids or ()),
            ("bad_words_token_ids", [t for word in sampling.bad_words_token_ids for t in word]),
        ):
            bad = next((t for t in ids if t >= vocab), None)
            if bad is not None:
                raise ValueError(f"{name}: token id {bad} is outside the vocabulary (size {vocab})")
        worst = length + sampling.max_tokens
        if -(-min(worst, self.max_model_len) // self.config.block_size) > self.blocks.num_blocks:
            raise ValueError(
                f"context {context_id} may need {worst} tokens of KV, more than the whole pool "
                f"({self.blocks.num_blocks * self.config.block_size} tokens)"
            )
        job = Job(next(self._job_ids), JobKind.GENERATE, priority, sampling=sampling)
        job.detokenizer = self.tokenizer.detokenizer(sampling.skip_special_tokens)
        job.free_on_finish = free_on_finish
        job.hold_latency_s = hold_latency_s
        if sampling.seed is not None and not sampling.greedy:
            job.generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        text = text_constraint(sampling)
        if text is not None:
            job.constraint = OutputConstraint(self._token_table, text, sampling.stop_token_ids)
        return self._add_job(ctx, job)

    def truncate(self, context_id: int, num_tokens: int) -> None:
        """Keep only the first `num_tokens` tokens of an idle context."""
        ctx = self._context(context_id)
        self._settle(ctx)
        if ctx.jobs:
            raise ValueError(f"context {context_id} has jobs running; truncate it when idle")
        if not 0 <= num_tokens <= len(ctx.token_ids):
            raise ValueError(
                f"cannot truncate context {context_id} of {len(ctx.token_ids)} tokens to {num_tokens}"
            )
        del ctx.token_ids[num_tokens:]
        self.scheduler.set_num_computed(ctx, num_tokens)

    def free(self, context_id: int) -> None:
        """Drop a context: its jobs are aborted and its blocks released (shared ones stay)."""
        ctx = self.scheduler.contexts.get(context_id)
        if ctx is None:
            return
        self._settle(ctx)
        for job in ctx.jobs:
            if not job.finished:
                job.finish_reason = "abort"
                self._pending_outputs.append(self._output(job, ctx, [], ""))
            self._jobs.pop(job.id, None)
        ctx.jobs.clear()
        self.scheduler.remove_context(ctx)

    def abort(self, job_id: int) -> None:
        """Stop a job early; its context stays (with what it generated so far)."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        ctx = next((c for c in self.scheduler.contexts.values() if job in c.jobs), None)
        if ctx is not None:
            self._settle(ctx)
            if job.finished:  # the paused step, run to its end, finished it
                return
        job.finish_reason = "abort"
        if ctx is not None:
            self._finish_job(ctx, job, [], "")

    def fail_all(self, reason: str) -> list[JobOutput]:
        """Fail every queued job (after an internal error) so that no caller waits forever."""
        if self._paused is not None:  # its contexts are among the running ones below
            self._paused = None
            self.scheduler.thaw()
        bs = self.config.block_size
        for ctx in list(self.scheduler.running):
            # Blocks registered for this step were never computed: nobody may find them.
            for block in ctx.block_table[ctx.num_computed // bs :]:
                self.blocks.unregister(block)
            del ctx.block_hashes[ctx.num_computed // bs :]
            self.scheduler.set_num_computed(ctx, ctx.num_computed)
        for ctx in list(self.scheduler.contexts.values()):
            for job in list(ctx.jobs):
                job.error = reason
                self._finish_job(ctx, job, [], "", activate_next=False)
        return self._drain_outputs()

    def context_len(self, context_id: int) -> int:
        return len(self._context(context_id).token_ids)

    def context_token_ids(self, context_id: int) -> list[int]:
        return list(self._context(context_id).token_ids)

    # ---- plain requests -------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> int:
        """A one-shot request: a fresh context, the prompt, a generation; freed when done.
        `cache_salt`: see `create_context`."""
        token_ids = (
            self.tokenizer.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        )
        if not token_ids:
            raise ValueError("prompt is empty")
        ctx_id = self.create_context(cache_salt=cache_salt)
        try:
            self._append_prompt(self._context(ctx_id), token_ids)
            return self.add_generate(ctx_id, sampling, priority, free_on_finish=True)
        except ValueError:
            self.free(ctx_id)
            raise

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        cache_salt: str | None = None,
    ) -> list[CompletionOutput]:
        """Run plain requests together in one continuous batch until all finish. Other work
        in the engine runs along; its outputs are kept for the next `step()`.

        `prompts` is a list of strings or of token-id lists, or one prompt (a string or a
        token-id list); `sampling_params` one for all, or one per prompt. A bad prompt raises
        ValueError before any is submitted. `cache_salt` salts every prompt (see
        `create_context`)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(
                f"{len(sampling_params)} sampling params for {len(prompts)} prompts: give one "
                "for all, or one per prompt"
            )
        prompt_ids = [
            self.tokenizer.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts
        ]
        job_ids: list[int] = []
        try:
            for ids, sp in zip(prompt_ids, sampling_params, strict=True):
                job_ids.append(self.add_request(ids, sp, cache_salt=cache_salt))
        except ValueError as exc:
            self._withdraw(job_ids)
            raise ValueError(f"prompt {len(job_ids)}: {exc}") from exc
        results: dict[int, JobOutput] = {}
        logprobs: dict[int, list[TokenLogprob]] = {j: [] for j in job_ids}
        prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
        others: list[JobOutput] = []

        def collect(outputs: list[JobOutput], last: bool = False) -> None:
            for out in outputs:
                if out.job_id not in logprobs:
                    others.append(out)
                    continue
                logprobs[out.job_id].extend(out.new_logprobs)
                if out.prompt_logprobs is not None:
                    prompt_logprobs[out.job_id] = out.prompt_logprobs
                if out.finished or last:
                    results[out.job_id] = out

        try:
            while len(results) < len(job_ids):
                collect(self.step())
                if not self.has_work and len(results) < len(job_ids):
                    collect(self._drain_outputs(), last=True)
                    break
        except Exception as exc:
            # A failed step leaves its batch in an unknown state (as the server's step loop
            # treats it): every job fails, so that these leave the engine rather than fail
            # every later step; the others' failures wait for the next `step()`.
            collect(self.fail_all(f"engine step failed: {exc!r}"))
            self._pending_outputs[:0] = others
            raise
        self._pending_outputs[:0] = others
        return [
            CompletionOutput(
                ids, results[j].token_ids, results[j].text, results[j].finish_reason,
                logprobs[j] if sp.logprobs is not None else None,
                prompt_logprobs.get(j),
                results[j].cached_tokens or 0,
                results[j].stop_reason,
            )
            for ids, j, sp in zip(prompt_ids, job_ids, sampling_params, strict=True)
        ]

    def _withdraw(self, job_ids: list[int]) -> None:
        """Abort jobs just added (nothing of them computed yet) and drop their outputs."""
        for job_id in job_ids:
            self.abort(job_id)
        gone = set(job_ids)
        self._pending_outputs = [o for o in self._pending_outputs if o.job_id not in gone]

    # ---- stepping -------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or bool(self._pending_outputs)

    @property
    def stats(self) -> EngineStats:
        self._stats.free_blocks = self.blocks.num_free_blocks
        self._stats.contexts = len(self.scheduler.contexts)
        self._stats.jobs = len(self._jobs)
        return self._stats

    def step(self) -> list[JobOutput]:
        """Schedule, run the model once, sample, and report every job that progressed.

        A step without latency-critical work pauses between two layers when `request_pause`
        asks it to (unless it scores a prompt): the next steps run the latency-critical work that
        came, and then the paused step goes on from where it stopped.
        """
        if self._paused is not None:
            return self._step_beside_paused()
        self._propose_drafts()
        batch = self.scheduler.schedule()
        self._drop_unscheduled_drafts(batch)
        self._held = not batch.scheduled and self.scheduler.held
        if self._held:
            return self._drain_outputs()  # held for latency work about to arrive: see idle_wait
        if not batch.scheduled and self.scheduler.waiting and not self.scheduler.running:
            self._fail_unschedulable()
            return self._drain_outputs()
        run = self._start(batch)
        if self._may_pause(batch, run):
            if not run.advance(self._pause_flag):
                # its drafts wait with it: the steps beside it must not verify or drop them
                self._paused = _PausedStep(batch, run, self._drafting)
                self._drafting = []
                self.scheduler.freeze(batch)
                self._stats.paused_steps += 1
                return self._drain_outputs()
        else:
            run.advance()
        self._finish_step(batch, run)
        return self._drain_outputs()

    def request_pause(self) -> None:
        """Ask the step in flight to pause at its next layer boundary, if it may (safe from
        any thread): called when latency-critical work has just been submitted. The step loop
        clears the request (`clear_pause_request`) before it applies new work."""
        self._pause_flag.value = 1

    def clear_pause_request(self) -> None:
        self._pause_flag.value = 0

    def run_until_idle(self) -> list[JobOutput]:
        outputs: list[JobOutput] = []
        while self.has_work:
            outputs.extend(self.step())
            wait = self.idle_wait()
            if wait > 0:
                time.sleep(wait)
        return outputs

    def idle_wait(self) -> float:
        """Seconds to wait before the next step when the last one ran nothing because a latency
        hold kept the waiting work out; a step loop sleeps that long or until new work comes."""
        return self.scheduler.latency_hold_left() if self._held else 0.0

    # ---- internals ------------------------------------------------------------------------
    def _start(self, batch: SchedulerOutput) -> StepRun:
        self._stats.steps += 1
        self._stats.cached_tokens += batch.num_cached_tokens
        self._stats.preemptions += len(batch.preempted)
        return self.runner.start(batch)

    def _finish_step(self, batch: SchedulerOutput, run: StepRun) -> None:
        self._stats.cascade_saved_tokens += run.cascade_saved_tokens
        for job, entries in run.scored_prompts:
            job.prompt_logprobs.extend(entries)
        self._postprocess(batch, run.logits)

    def _may_pause(self, batch: SchedulerOutput, run: StepRun) -> bool:
        return (
            self.config.pausable_steps
            and run.pausable
            and batch.num_tokens >= self.config.pause_min_tokens
            and not any(self.scheduler.is_latency(s.ctx) for s in batch.scheduled)
        )

    # ---- speculative decoding (n-gram drafts) ----------------------------------------------
    def _propose_drafts(self) -> None:
        """Draft tokens for decodes: each drafted sequence is computed whole in the step,
        and its logits confirm or refute the drafts. Drafts fill the step up to `ngram_max_rows`
        rows. With latency-critical decodes about, they draft and the rows of other work that
        the latency cap lets in count against that; otherwise every decode may draft while the
        step holds decodes only and nothing waits."""
        k = self.config.ngram_speculation
        if not k:
            return
        running = self.scheduler.running
        if self._paused is not None:  # its contexts take no part in the steps beside it
            running = [c for c in running if not self.scheduler.is_frozen(c)]
        latency = [c for c in running if self.scheduler.is_latency(c) and c.num_pending == 1]
        if latency:
            others = len(running) - len(latency)
            cap = self.config.latency_max_batched_tokens
            riding = others if cap is None else min(
                others, cap + self.config.latency_other_decode_rows)  # fmt: skip
            drafting, budget = latency, self.config.ngram_max_rows - len(latency) - riding
        elif self.scheduler.waiting or any(c.num_pending != 1 for c in running):
            return
        else:
            drafting, budget = running, self.config.ngram_max_rows - len(running)
        budget = min(budget, self.config.max_num_batched_tokens - len(running))
        spare_blocks = self.blocks.num_free_blocks - len(running)
        cut, self._cut_drafts = self._cut_drafts, set()
        for ctx in drafting:
            job = ctx.job
            if budget <= 0 or spare_blocks * self.config.block_size <= max(k, budget):
                break
            if job is None or job.kind is not JobKind.GENERATE or not _may_draft(job):
                continue
            if ctx.id in cut:  # a cap cut its drafted row last step: a plain step first
                continue
            assert job.sampling is not None
            room = min(budget, job.sampling.max_tokens - len(job.output_token_ids) - 1,
                       self.max_model_len - len(ctx.token_ids) - 1)  # fmt: skip
            drafts = self._drafts(ctx, job, room) if room > 0 else []
            if drafts:
                ctx.token_ids.extend(drafts)
                ctx.num_drafts = len(drafts)
                self._drafting.append(ctx)
                budget -= len(drafts)
                spare_blocks -= -(-len(drafts) // self.config.block_size)

    def _drafts(self, ctx: Context, job: Job, room: int) -> list[int]:
        """What a constraint forces next (all of it the room allows: it is nearly sure), else up
        to `ngram_speculation` tokens that followed the context's latest tail elsewhere in it."""
        if job.constraint is not None:
            forced = job.constraint.forced_text(_FORCED_BYTES)
            if forced:
                return self.tokenizer.encode(forced.decode("ascii"))[:room]
        return ngram_drafts(ctx.token_ids, min(room, self.config.ngram_speculation))

    def _drop_unscheduled_drafts(self, batch: SchedulerOutput) -> None:
        """Drafts of contexts the step does not compute (out of budget, preempted) go now."""
        if not self._drafting:
            return
        computed = {s.ctx.id for s in batch.scheduled if s.num_tokens > 0}
        for ctx in self._drafting:
            if ctx.id not in computed:
                _undraft(ctx)
                self._cut_drafts.add(ctx.id)
        self._drafting = [c for c in self._drafting if c.num_drafts]

    def _take_verified(self, s: ScheduledContext, rows: torch.Tensor) -> None:
        """Verifies a drafted row with its logits (`rows`: 1 + drafts rows, one per place) and
        takes the tokens one by one through the usual path (so stop strings, EOS, max_tokens and
        a constraint apply to each). The token at each place is chosen as a plain step would
        choose it there, with the state (penalties, constraint, seed) the drafts before it made;
        a draft stays while it is that token, and the first chosen token that differs ends the
        row. A draft is a point mass, so for sampled rows this is exact speculative sampling:
        accepting draft d with probability p(d) and otherwise drawing from p without d draws
        each token with p. The confirmed drafts' K/V, computed in the step, stay."""
        ctx, job = s.ctx, s.ctx.sampling_job
        assert job is not None and job.sampling is not None
        drafts = ctx.token_ids[len(ctx.token_ids) - ctx.num_drafts :]
        _undraft(ctx)
        ctx.num_computed = len(ctx.token_ids)  # the token that was pending is computed now
        # plain greedy rows need no state between places: every choice in one argmax
        fast = rows.argmax(-1).tolist() if _plain_greedy(job) else None
        accepted = 0
        for i in range(len(drafts) + 1):
            if fast is not None:
                token, logprob = fast[i], None
            else:
                chosen, logprobs = sample(
                    rows[i : i + 1], [job.sampling], [job.generator], [job.output_token_ids],
                    [job.constraint], [ctx.token_ids], self.eos_token_ids,
                )  # fmt: skip
                token, logprob = chosen[0], logprobs[0]
            confirmed = i < len(drafts) and token == drafts[i]
            self._append_token(ctx, job, token, logprob)
            if not confirmed or job.finished or ctx.id not in self.scheduler.contexts:
                break
            accepted += 1
            ctx.num_computed += 1  # a confirmed draft: computed in this step
        self._stats.drafted_tokens += len(drafts)
        self._stats.accepted_tokens += accepted
        if ctx.id in self.scheduler.contexts:
            # blocks and hashes past what is computed (refuted drafts) are dropped
            self.scheduler.set_num_computed(ctx, ctx.num_computed)

    def _step_beside_paused(self) -> list[JobOutput]:
        """While a step is paused: a step of the latency-critical work (and what rides along
        with it), or, when there is none to run, the paused step goes on."""
        self._held = False
        if self.scheduler.has_latency_contexts():
            # its drafts are set aside (`_PausedStep.drafting`): these steps draft their own
            self._propose_drafts()
            batch = self.scheduler.schedule()
            self._drop_unscheduled_drafts(batch)
            if batch.scheduled:
                run = self._start(batch)
                run.advance()
                self._finish_step(batch, run)
                preempted = any(self.scheduler.is_latency(c) for c in batch.preempted)
                if preempted and self._paused is not None:
                    # Latency work ran out of blocks: those the paused step's contexts hold
                    # can be taken only once that step has ended (frozen, they are never
                    # preempted), and it ends only between steps of no latency work. Left
                    # paused, the latency work would preempt itself and recompute its first
                    # chunk at every step, forever; so the paused step ends now.
                    self._paused.run.advance()
                    self._end_pause()
                return self._drain_outputs()
        assert self._paused is not None
        if self._paused.run.advance(self._pause_flag):
            self._end_pause()
        return self._drain_outputs()

    def _settle(self, ctx: Context) -> None:
        """Before `ctx` changes: if a paused step holds it, run the rest of that step now."""
        if self._paused is not None and self.scheduler.is_frozen(ctx):
            self._paused.run.advance()
            self._end_pause()

    def _end_pause(self) -> None:
        assert self._paused is not None
        paused, self._paused = self._paused, None
        self.scheduler.thaw()
        self._drafting = paused.drafting
        self._finish_step(paused.batch, paused.run)

    def _context(self, context_id: int) -> Context:
        ctx = self.scheduler.contexts.get(context_id)
        if ctx is None:
            raise KeyError(f"no context {context_id}")
        return ctx

    def _append_prompt(self, ctx: Context, token_ids: Sequence[int]) -> None:
        tokens = self._checked_tokens(ctx, token_ids)
        ctx.token_ids.extend(tokens)
        self._stats.prompt_tokens += len(tokens)

    def _checked_tokens(self, ctx: Context, token_ids: Sequence[int]) -> list[int]:
        tokens = [_token_id(t) for t in token_ids]
        vocab = self.model_config.vocab_size
        bad = next((t for t in tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (size {vocab})")
        if ctx.queued_len + len(tokens) > self.max_model_len:
            raise ValueError(
                f"context {ctx.id} would hold {ctx.queued_len + len(tokens)} tokens, "
                f"more than max_model_len {self.max_model_len}"
            )
        return tokens

    def _add_job(self, ctx: Context, job: Job) -> int:
        job.arrival = next(self._arrivals)
        self._jobs[job.id] = job
        ctx.jobs.append(job)
        if len(ctx.jobs) == 1:
            self._activate(ctx)
        self.scheduler.wake(ctx)
        return job.id

    def _activate(self, ctx: Context) -> None:
        """Start the head job: a fill appends its tokens; a generation needs the logits of the
        last token, so with nothing pending that token is computed again."""
        job = ctx.job
        if job is None:
            return
        if job.kind is JobKind.FILL:
            ctx.token_ids.extend(job.fill_token_ids)
        elif ctx.num_pending == 0:
            self.scheduler.set_num_computed(ctx, len(ctx.token_ids) - 1)

    def _postprocess(self, batch: SchedulerOutput, logits: torch.Tensor | None) -> None:
        sampling_rows = [s for s in batch.scheduled if s.sample and not s.drafts]
        verified: list[tuple[ScheduledContext, torch.Tensor]] = []
        if logits is not None and any(s.drafts for s in batch.scheduled):
            plain_rows, at = [], 0  # a drafted row has 1 + drafts rows of logits
            for s in (s for s in batch.scheduled if s.sample):
                if s.drafts:
                    verified.append((s, logits[at : at + 1 + s.drafts]))
                else:
                    plain_rows.append(at)
                at += 1 + s.drafts
            logits = logits[torch.tensor(plain_rows, dtype=torch.long, device=logits.device)]
        jobs = [s.ctx.sampling_job for s in sampling_rows]
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        if sampling_rows and logits is not None:
            tokens, logprobs = sample(
                logits, [j.sampling for j in jobs], [j.generator for j in jobs],
                [j.output_token_ids for j in jobs], [j.constraint for j in jobs],
                [s.ctx.token_ids for s in sampling_rows], self.eos_token_ids,
            )
        for s in batch.scheduled:
            ctx, job = s.ctx, s.ctx.job
            decode = 0
            if job is not None and job.kind is JobKind.GENERATE and job.output_token_ids:
                first_output = len(ctx.token_ids) - ctx.num_drafts - len(job.output_token_ids)
                end = ctx.num_computed + s.num_tokens
                decode = max(0, end - max(first_output, ctx.num_computed))
            self._stats.prefill_tokens += s.num_tokens - decode
            ctx.num_computed += s.num_tokens
        for s in batch.scheduled:
            ctx, job = s.ctx, s.ctx.job
            if job is not None and job.kind is JobKind.FILL and ctx.num_pending == 0:
                job.finish_reason = "stop"
                # With a sample in hand, the generation that follows starts from it.
                self._finish_job(ctx, job, [], "", activate_next=not s.sample)
        for s, job, token, logprob in zip(sampling_rows, jobs, tokens, logprobs, strict=False):
            self._append_token(s.ctx, job, token, logprob)
        for s, rows in verified:
            self._take_verified(s, rows)
        for ctx in self._drafting:
            if ctx.num_drafts:  # computed in part, not verified: its last real token again
                real = len(ctx.token_ids) - ctx.num_drafts
                _undraft(ctx)
                self.scheduler.set_num_computed(ctx, min(ctx.num_computed, real - 1))
                self._cut_drafts.add(ctx.id)
        self._drafting = []

    def _append_token(
        self, ctx: Context, job: Job, token: int, logprob: TokenLogprob | None = None
    ) -> None:
        sp = job.sampling
        assert sp is not None
        ctx.token_ids.append(token)
        job.output_token_ids.append(token)
        if job.constraint is not None:
            job.constraint.advance(token)
        self._stats.generated_tokens += 1
        reason: str | None = None
        if (token in self.eos_token_ids and not sp.ignore_eos) or token in sp.stop_token_ids:
            reason = "stop"
            # EOS says nothing more (as vLLM's stop_reason None); a stop id is named
            if token not in self.eos_token_ids or sp.ignore_eos:
                job.stop_reason = token
        elif len(job.output_token_ids) >= sp.max_tokens or len(ctx.token_ids) >= self.max_model_len:
            reason = "length"
        detok = job.detokenizer
        assert detok is not None
        if reason != "stop" or sp.include_stop_str_in_output:
            # a stop token's text is not part of the output unless asked (as vLLM's)
            detok.add(token)  # releases text only up to the last complete character
        if reason is not None:
            detok.finish()
        text = detok.text
        if sp.stop and len(job.output_token_ids) > sp.min_tokens:
            # only a stop string that ends in this token's text counts (each string searched
            # from its own length back), and only in a token past the first min_tokens, where
            # EOS and stop ids may come too (as vLLM's): one written before those is past
            hits = [
                (i, -len(s), s) for s in sp.stop
                if (i := text.find(s, max(0, len(job.text) - len(s) + 1))) >= 0
            ]  # fmt: skip
            if hits:
                at, minus_len, job.stop_reason = min(hits)  # the first; of two there, the longer
                end = at - minus_len if sp.include_stop_str_in_output else at
                text, reason = text[:end], "stop"
        job.text = text
        if reason is not None:
            job.finish_reason = reason
            emit_upto = len(text)
        elif sp.include_stop_str_in_output:
            emit_upto = len(text)  # a stop string found later ends past all of this text
        else:
            # Hold back what may be the start of a stop string.
            emit_upto = len(text) - max((len(s) - 1 for s in sp.stop), default=0)
        new_text = text[job.emitted_text_len : max(emit_upto, job.emitted_text_len)]
        job.emitted_text_len = max(emit_upto, job.emitted_text_len)
        new_logprobs = [] if logprob is None else [logprob]
        if job.finished:
            self._finish_job(ctx, job, [token], new_text, new_logprobs=new_logprobs)
        else:
            self._pending_outputs.append(self._output(job, ctx, [token], new_text, new_logprobs))

    def _finish_job(
        self,
        ctx: Context,
        job: Job,
        new_tokens: list[int],
        new_text: str,
        activate_next: bool = True,
        new_logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        self._pending_outputs.append(self._output(job, ctx, new_tokens, new_text, new_logprobs))
        self._jobs.pop(job.id, None)
        if job.hold_latency_s > 0 and job.error is None and job.finish_reason != "abort":
            self.scheduler.hold_latency(job.hold_latency_s)
        was_head = ctx.job is job
        if job in ctx.jobs:
            ctx.jobs.remove(job)
            if was_head and ctx.jobs:
                self.scheduler.rerank(ctx)  # ranked by its head job
        if job.free_on_finish:
            self.free(ctx.id)
            return
        if not ctx.jobs:
            self.scheduler.sleep(ctx)
        elif was_head and (activate_next or ctx.job.kind is JobKind.FILL):
            # the next job starts (a job behind the head, e.g. aborted, starts nothing)
            self._activate(ctx)

    def _fail_unschedulable(self) -> None:
        ctx = self.scheduler.waiting[0]
        job = ctx.job
        if job is None:
            self.scheduler.sleep(ctx)
            return
        job.error = (
            f"context {ctx.id} needs {len(ctx.token_ids)} tokens of KV; the pool cannot hold it"
        )
        self._finish_job(ctx, job, [], "")

    def _output(
        self,
        job: Job,
        ctx: Context,
        new_tokens: list[int],
        new_text: str,
        new_logprobs: list[TokenLogprob] | None = None,
    ) -> JobOutput:
        prompt_logprobs = None
        if job.wants_prompt_logprobs and not job.prompt_logprobs_sent and (
            new_tokens or job.finished
        ):
            prompt_logprobs, job.prompt_logprobs_sent = list(job.prompt_logprobs), True
        return JobOutput(
            job.id,
            ctx.id,
            new_tokens,
            new_text,
            list(job.output_token_ids),
            job.text,
            job.finished,
            job.finish_reason,
            job.error,
            new_logprobs or [],
            prompt_logprobs,
            job.cached_tokens,
            job.stop_reason,
        )

    def _drain_outputs(self) -> list[JobOutput]:
        outputs, self._pending_outputs = self._pending_outputs, []
        return outputs


# the most bytes of forced text looked for per drafting step: ~8 tokens of JSON keys
_FORCED_BYTES = 32


@dataclass(slots=True)
class _PausedStep:
    """A step stopped between two layers: its batch, its run to go on with, and the contexts
    whose drafts it verifies."""

    batch: SchedulerOutput
    run: StepRun
    drafting: list[Context]


def _token_id(value: object) -> int:
    """`value` as a token id: an integer (numpy's and 0-d tensors' too). `int()` would cut
    1.9 to 1 or parse "7", and its TypeError (None) would slip past the callers' cleanup
    of a ValueError."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"token ids are integers, got {value!r}") from None


def _may_draft(job: Job) -> bool:
    """Every generation may draft but one that scores its prompt (its steps compute the logits
    of every prompt place, not of drafts)."""
    return job.sampling is not None and job.sampling.prompt_logprobs is None


def _plain_greedy(job: Job) -> bool:
    """Greedy on the raw logits, with nothing to report but the token."""
    sp = job.sampling
    assert sp is not None
    return sp.greedy and not sp.adjusts_logits and sp.logprobs is None and job.constraint is None


def _undraft(ctx: Context) -> None:
    """Take the drafted tokens out of the context's tokens."""
    del ctx.token_ids[len(ctx.token_ids) - ctx.num_drafts :]
    ctx.num_drafts = 0


def _packed_linear(configured: bool | None, device: torch.device) -> bool:
    """The configured choice, or (None) the packed CPU kernels where this CPU suits them."""
    if configured is not None:
        return configured
    suited = cpu.suited()
    if not suited and device.type == "cpu":
        log.info("CPU linear layers on torch's matmul: the packed kernels are written for "
                 "AVX2 and AVX-512, which this CPU lacks")  # fmt: skip
    return suited
