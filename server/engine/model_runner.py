"""Owns the model and its KV cache tensors; runs one scheduled batch."""

from __future__ import annotations

import torch

from server.engine.config import EngineConfig
from server.engine.context import Job
from server.engine.outputs import TokenLogprob
from server.engine.scheduler import ScheduledContext, SchedulerOutput
from server.engine.step_run import StepRun
from server.kernels import CascadeConfig, build_attention_metadata
from server.kernels.backends import default_backend_name
from server.kernels.cpu import huge_pages, paged_decode, paged_levels, vector_width


class ModelRunner:
    """Owns the KV cache tensors; lays out a scheduled batch and starts its model run (StepRun)."""

    def __init__(
        self,
        model: torch.nn.Module,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        max_model_len: int,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        # whether the paged decode and levels kernels take this model's heads on this CPU
        # (fixed for its life; every head dim the decode kernel takes, the levels kernel takes
        # too)
        self._paged_kernels = (
            device.type == "cpu"
            and dtype == torch.float32
            and paged_decode.supports(num_heads, num_kv_heads, head_dim)
            and vector_width.suited()
            and paged_decode.available()
            and paged_levels.available()
        )
        bytes_per_block = 2 * num_layers * config.block_size * num_kv_heads * head_dim
        bytes_per_block *= torch.finfo(dtype).bits // 8
        # Sized by memory, but never beyond what max_num_seqs full-length sequences could use.
        by_memory = int(config.kv_cache_gb * (1 << 30)) // bytes_per_block
        by_use = -(-max_model_len * config.max_num_seqs // config.block_size)
        self.num_blocks = config.num_kv_blocks or max(2, min(by_memory, by_use))
        shape = (self.num_blocks, config.block_size, num_kv_heads, head_dim)
        self.kv_caches = [(self._cache(shape), self._cache(shape)) for _ in range(num_layers)]

    def cascade_rule(self) -> CascadeConfig:
        """The configured cost rule, else the one measured for the kernels this model's steps
        use (on the `cpu` backend: whether the paged kernels take its heads)."""
        if self.config.cascade_rule is not None:
            return self.config.cascade_rule
        backend = self.config.attention_backend or default_backend_name(self.device)
        if backend != "cpu":
            return CascadeConfig.for_backend(backend)
        return CascadeConfig.for_cpu_path(paged_kernels=self._paged_kernels)

    def _cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One layer's K or V pool. On CPU in huge pages: a step's blocks lie all over the
        pool, and decode attention read them 5-8% faster so (server/kernels/cpu/huge_pages.py);
        written once now unless `prefault_kv_cache` is off (then untouched blocks cost no
        memory, and a block's first use pays for mapping its pages)."""
        if self.device.type == "cpu":
            pool = huge_pages.zeros(shape, self.dtype)
            if self.config.prefault_kv_cache:
                pool.zero_()  # a write maps the pages; the kernel's zero page is only read-shared
            return pool
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def start(self, batch: SchedulerOutput) -> StepRun:
        """Apply the batch's block copies and lay out its inputs; the run itself happens in
        `StepRun.advance`, which on the decoder stack may pause between layers."""
        if batch.block_copies:
            src = torch.tensor([s for s, _ in batch.block_copies], device=self.device)
            dst = torch.tensor([d for _, d in batch.block_copies], device=self.device)
            for k_cache, v_cache in self.kv_caches:
                k_cache[dst] = k_cache[src]
                v_cache[dst] = v_cache[src]
        work = [s for s in batch.scheduled if s.num_tokens > 0]
        if not work:
            return StepRun(compute=lambda: None)
        input_ids: list[int] = []
        positions: list[int] = []
        query_lens, seq_lens, tables, last_rows = [], [], [], []
        first_rows: list[int] = []
        for s in work:
            first_rows.append(len(input_ids))
            start = s.ctx.num_computed
            end = start + s.num_tokens
            input_ids.extend(s.ctx.token_ids[start:end])
            positions.extend(range(start, end))
            query_lens.append(s.num_tokens)
            seq_lens.append(end)
            tables.append(s.ctx.block_table)
            if s.sample:  # the last row, and before it the rows that verify drafted tokens
                last_rows.extend(range(len(input_ids) - 1 - s.drafts, len(input_ids)))
        meta = build_attention_metadata(
            query_lens,
            seq_lens,
            tables,
            self.block_size,
            self.device,
            cascade=self.config.enable_cascade,
            cascade_config=self.cascade_rule(),
            backend=self.config.attention_backend,
        )
        saved = sum((len(p.seqs) - 1) * (p.end - p.start) for p in meta.shared_prefixes)
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        scoring = any(s.ctx.sampling_job is not None and s.ctx.sampling_job.wants_prompt_logprobs
                      for s in work)
        if not scoring:
            # only the sampled rows' logits (on the decoder stack the head runs in the step's
            # call), and the step can pause between layers
            layers = self.model.start_logits(ids, pos, self.kv_caches, meta, last_rows)
            if layers is not None:
                return StepRun(layers=layers, cascade_saved_tokens=saved)
            if last_rows:
                return StepRun(
                    compute=lambda: self.model.forward_logits(
                        ids, pos, self.kv_caches, meta, last_rows
                    ),
                    cascade_saved_tokens=saved,
                )

        def compute() -> torch.Tensor | None:
            hidden = self.model(ids, pos, self.kv_caches, meta)
            for s, first_row in zip(work, first_rows, strict=True):
                job = s.ctx.sampling_job
                if job is not None and job.wants_prompt_logprobs:
                    run.scored_prompts.append(self._score_prompt(s, job, first_row, hidden))
            if not last_rows:
                return None
            rows = torch.tensor(last_rows, dtype=torch.long, device=self.device)
            return self.model.compute_logits(hidden.index_select(0, rows)).float()

        run = StepRun(compute=compute, cascade_saved_tokens=saved)  # compute fills its scores
        return run

    def _score_prompt(
        self, s: ScheduledContext, job: Job, first_row: int, hidden: torch.Tensor
    ) -> tuple[Job, list[TokenLogprob]]:
        """Log probabilities of the prompt tokens this chunk's positions predict (position p's
        logits score token p + 1), each token once, also when a preempted context computes
        its prompt again."""
        start = s.ctx.num_computed
        prompt_len = len(s.ctx.token_ids) - len(job.output_token_ids)
        lo = max(start, len(job.prompt_logprobs) - 1)
        hi = min(start + s.num_tokens, prompt_len - 1)
        if lo >= hi:
            return job, []
        assert job.sampling is not None and job.sampling.prompt_logprobs is not None
        top = job.sampling.prompt_logprobs
        rows = torch.arange(first_row + lo - start, first_row + hi - start, device=self.device)
        targets = torch.tensor(s.ctx.token_ids[lo + 1 : hi + 1], device=self.device)
        entries: list[TokenLogprob] = []
        # a few rows at a time: [rows, vocab] float32 logits are large
        for a in range(0, rows.numel(), _SCORE_ROWS):
            logits = self.model.compute_logits(hidden.index_select(0, rows[a : a + _SCORE_ROWS]))
            logprobs = logits.float().log_softmax(-1)
            picked = logprobs.gather(1, targets[a : a + _SCORE_ROWS, None])
            ranks = ((logprobs > picked).sum(-1) + 1).tolist()
            chosen = picked[:, 0].tolist()
            best = logprobs.topk(top, dim=-1) if top else None
            for i, value in enumerate(chosen):
                alternatives = (
                    list(zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True))
                    if best is not None else []
                )
                entries.append(TokenLogprob(int(targets[a + i]), value, alternatives, ranks[i]))
        return job, entries


_SCORE_ROWS = 128
