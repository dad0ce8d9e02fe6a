"""When a shared prefix is worth attending once for a whole group (the cost rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    """Thresholds for planning a shared-prefix (cascade) level.

    A level is planned only for at least `min_group_size` decoding sequences sharing at least
    `min_prefix_tokens` tokens of KV, whose shared reads saved, (group size - 1) x prefix
    tokens, reach `min_saved_tokens`. Below them the level's extra call and merge cost more
    than the reads they save. `for_device` gives the thresholds measured with
    `python -m benchmarks.attention --cost-rule` (see server/kernels/README.md).
    """

    min_prefix_tokens: int = 128
    min_group_size: int = 2
    min_saved_tokens: int = 0

    def __post_init__(self) -> None:
        if self.min_prefix_tokens < 1:
            raise ValueError(f"min_prefix_tokens must be >= 1, got {self.min_prefix_tokens}")
        if self.min_group_size < 2:
            raise ValueError(
                f"min_group_size must be >= 2 (one sequence has nothing to share), "
                f"got {self.min_group_size}"
            )
        if self.min_saved_tokens < 0:
            raise ValueError(f"min_saved_tokens must be >= 0, got {self.min_saved_tokens}")

    @classmethod
    def for_device(cls, device: torch.device | str) -> CascadeConfig:
        """The measured rule for this kind of device's default backend."""
        import torch  # here: engine settings (EngineConfig) hold this class in a torch-free server

        return CUDA_RULE if torch.device(device).type == "cuda" else CPU_RULE

    @classmethod
    def for_backend(cls, name: str) -> CascadeConfig:
        """The measured rule for an attention backend (see server.kernels.backends)."""
        return CPU_SDPA_RULE if name == "cpu-sdpa" else CPU_RULE if name == "cpu" else CUDA_RULE

    @classmethod
    def for_cpu_path(cls, paged_kernels: bool) -> CascadeConfig:
        """The measured rule for the `cpu` backend, by the kernels a model's steps use there:
        the paged decode and levels kernels (in the decoder stack or layer by layer), else
        (head sizes the kernels lack) one PyTorch call per sequence and per level."""
        return CPU_RULE if paged_kernels else CPU_SDPA_RULE

    def pays(self, group_size: int, prefix_tokens: int) -> bool:
        """Whether a level of `group_size` sequences over `prefix_tokens` tokens is planned."""
        return (
            group_size >= self.min_group_size
            and prefix_tokens >= self.min_prefix_tokens
            and (group_size - 1) * prefix_tokens >= self.min_saved_tokens
        )


# CPU backend (2 cores, float32): the paged levels kernel (cpu/paged_levels.c) reads a level's
# span once for all its members, in the decoder stack's one C call per step or layer by layer.
# Per layer (`python -m benchmarks.attention --cost-rule`) a level paid from 4 x 512 (1.06-1.21x)
# and 8 x 512 (1.40x), and lost for every group of 2 (0.61-0.78x) and below 256 shared tokens;
# on whole SmolLM2 steps of forks (`--engine-rule`, cascade forced) levels saving under ~6k
# reads measured 0.94-1.29x (within the steps' noise; 2 x 2048: 0.84x), 16 x 2048 1.20-1.30x,
# 32 x 1024 1.23-1.42x, 64 x 2048 and 32 x 4096 1.45-1.51x.
CPU_RULE = CascadeConfig(min_prefix_tokens=256, min_group_size=4, min_saved_tokens=4096)
# cpu-sdpa backend (PyTorch's kernel for everything, a call per sequence): cascade paid for any
# group from 128 shared tokens (2 x 128: 1.23x, 16 x 128: 2.77x) and lost below (16 x 64:
# 0.72x), where per-sequence decode gathers the whole short sequence into one batched call.
CPU_SDPA_RULE = CascadeConfig(min_prefix_tokens=128, min_group_size=2)
# CUDA (H200, Triton kernels, bfloat16): per-sequence decode of a prefix that stays in L2 is
# cheap, so cascade paid only from about 32k saved prefix-token reads (64 x 512: 1.10x,
# 16 x 2048: 1.01x, 16 x 512: 0.85x).
CUDA_RULE = CascadeConfig(min_prefix_tokens=256, min_group_size=8, min_saved_tokens=32_768)
