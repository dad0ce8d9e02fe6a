"""The Triton backend's tile sizes and KV split rule (importable without Triton)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TritonConfig:
    """Tile sizes and the KV split rule.

    `wide_rows`/`narrow_rows`: query rows (tokens x GQA group) per tile for multi-token tasks
    and for single decodes. float32 uses `narrow_rows` for every task: its exact dots run on
    CUDA cores, and 64-row float32 tiles spilled (about 0.12 ms per 64-key step on an H200,
    against microseconds for 16 rows). KV is split into chunks of at least `min_chunk` tokens
    when fewer than `programs_per_sm` programs per multiprocessor would run otherwise.
    `num_stages`: Triton's software-pipelining depth for the KV loop (None: Triton's default).
    `fused`: the merge in the attention launch (the last program to finish a token's part
    merges the token), and in steps of decodes only, the cache write too; else a decode step's
    layer is three dependent launches (cache write, attention, merge). Off by default until
    it pays: timed on an H200 (2026-11-30), it made the 64 x 4096 bf16 cascade step slower,
    SmolLM2's heads 25.2 us against 17.7, Llama-3-8B's 64.4 against 37.7.
    """

    block_n: int = 64
    wide_rows: int = 64
    narrow_rows: int = 16
    min_chunk: int = 512
    programs_per_sm: int = 4
    num_warps: int = 4
    num_stages: int | None = None
    fused: bool = False

    def __post_init__(self) -> None:
        for name in ("block_n", "wide_rows", "narrow_rows"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        if self.min_chunk < self.block_n or self.min_chunk % self.block_n:
            raise ValueError(f"min_chunk must be a multiple of block_n, got {self.min_chunk}")
        if self.programs_per_sm < 1 or self.num_warps < 1:
            raise ValueError("programs_per_sm and num_warps must be >= 1")
        if self.num_stages is not None and self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1 or None, got {self.num_stages}")
