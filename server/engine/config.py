"""Engine configuration."""

from __future__ import annotations

from dataclasses import dataclass

from server.kernels.backend_names import BACKEND_NAMES
from server.kernels.cascade_config import CascadeConfig


@dataclass(slots=True)
class EngineConfig:
    """How an engine sizes its KV pool and builds its batches.

    `num_kv_blocks` wins over `kv_cache_gb` when both are given. `max_num_batched_tokens` is the
    per-step token budget (chunked prefill and decodes together); `max_num_seqs` caps how many
    sequences run at once. `latency_max_batched_tokens` caps the tokens of other work in steps
    taken while latency-critical work (priority <= `latency_priority`) is queued or running.
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_gb: float = 2.0
    # Write every page of a CPU KV pool at start. The OS maps a page at its first write, which
    # costs 0.2-1.2 s per GB here (huge pages the most): without this a fresh pool pays it inside
    # the steps that first use each block (~2 s of a 33-35 s `benchmarks.engine` run), as the
    # allocator hands out never-used blocks before evicting cached ones. False: pages are mapped
    # on first use, and blocks never used cost no memory.
    prefault_kv_cache: bool = True
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int | None = None
    enable_prefix_cache: bool = True
    enable_cascade: bool = True
    # While work of priority <= latency_priority waits or runs, other work fills a step only up
    # to this many tokens, so latency-critical decodes run in small fast steps (0: nothing else
    # runs meanwhile; None: no cap).
    latency_max_batched_tokens: int | None = None
    # ... and on top of that cap, up to this many decode rows (one token each) of other work
    # ride along: on a few CPU cores a step of 4 rows costs about what a step of 1 costs
    # (benchmarks.step_cost), so bulk decodes progress while a latency-critical call decodes.
    latency_other_decode_rows: int = 0
    latency_priority: int = 0
    # Prefill tokens per step of background work (priority >= background_priority), at all
    # times (None: only the step budget): a latency call arriving mid-step then waits for a
    # short step, not for a long prefill chunk. On CPU the linear layers run at the same FLOP
    # rate from ~32 rows up, so small chunks cost background work little.
    background_max_prefill_tokens: int | None = None
    background_priority: int = 2
    # A step without latency-critical work may pause between two layers when such work is
    # submitted meanwhile (LLMEngine.request_pause), so that work does not wait for the step
    # in flight (steps that score their prompt run whole)
    pausable_steps: bool = True
    # Steps of fewer tokens run to their end: the latency-critical work waits for at most one
    # short step (a few decode rows, a small chunk: ~20-80 ms here), and that step's decodes
    # are then free to ride along its steps, where a paused step's stay frozen until the
    # latency-critical work is done (0: every step may pause)
    pause_min_tokens: int = 64
    # CPU float32 linear layers on the packed kernel (server/kernels/cpu); off: torch.mm;
    # None: where the CPU has AVX2 or AVX-512 (`cpu.suited()`), else torch's matmul
    packed_linear: bool | None = None
    # With packed linears, steps without shared-prefix levels on the default CPU backend run all
    # layers in one C call (server/kernels/cpu/decoder_stack.c); off: layer by layer
    fused_layers: bool = True
    # With packed linears, layers converted from a GGUF's Q4_0/Q4_1/Q4_K weights keep them 4-bit
    # too, from Q8_0/Q6_K weights 8-bit (a tied head its embedding), and use them for products of
    # few rows (decode steps stream ~5x / ~3.5x fewer bytes; checked at load to equal the float32
    # weights bit for bit); off: float32 panels only
    quantized_linear: bool = True
    # attention kernels by name (server.kernels.backend_names); None: by device
    attention_backend: str | None = None
    # when a shared prefix is attended once for its group (cascade); None: the rule measured
    # for the backend (server/kernels/cascade_config.py)
    cascade_rule: CascadeConfig | None = None
    # Speculative decoding by n-gram lookup (server/engine/ngram_drafts.py): up to this many
    # drafted tokens per decoding sequence, verified in the step (0: off; with it on, a
    # constrained output drafts the text its constraint forces, server/engine/forced_text.py,
    # as many tokens as the rows allow). Drafts are proposed
    # only while a step's decode rows and drafts together stay within `ngram_max_rows`: on a
    # few CPU cores a step of up to ~6 rows costs about what one row costs
    # (benchmarks.step_cost), so the drafts ride free while the batch is small.
    ngram_speculation: int = 0
    ngram_max_rows: int = 6

    def __post_init__(self) -> None:
        if self.attention_backend is not None and self.attention_backend not in BACKEND_NAMES:
            raise ValueError(
                f"attention_backend must be one of {BACKEND_NAMES} (or None: by device), "
                f"got {self.attention_backend!r}"
            )
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError(f"num_kv_blocks must be at least 2, got {self.num_kv_blocks}")
        if not 0 < self.kv_cache_gb < float("inf"):  # NaN too
            raise ValueError(f"kv_cache_gb must be positive and finite, got {self.kv_cache_gb}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.latency_max_batched_tokens is not None and self.latency_max_batched_tokens < 0:
            raise ValueError(
                "latency_max_batched_tokens must be >= 0 (or None for no cap), "
                f"got {self.latency_max_batched_tokens}"
            )
        if self.latency_other_decode_rows < 0:
            raise ValueError(
                f"latency_other_decode_rows must be >= 0, got {self.latency_other_decode_rows}"
            )
        if self.background_max_prefill_tokens is not None and self.background_max_prefill_tokens < 1:
            raise ValueError(
                "background_max_prefill_tokens must be >= 1 (or None for no cap), "
                f"got {self.background_max_prefill_tokens}"
            )
        if self.pause_min_tokens < 0:
            raise ValueError(f"pause_min_tokens must be >= 0, got {self.pause_min_tokens}")
        if self.ngram_speculation < 0 or self.ngram_max_rows < 1:
            raise ValueError(
                "ngram_speculation must be >= 0 and ngram_max_rows >= 1, got "
                f"{self.ngram_speculation} and {self.ngram_max_rows}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
