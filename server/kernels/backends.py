"""Which kernel runs the step: chosen by device and by what is importable, or by name."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch

from server.kernels.attend_ops import attend_cpu, attend_flash_attn, attend_torch_cuda
from server.kernels.backend_names import BACKEND_NAMES
from server.kernels.metadata import AttentionMetadata
from server.kernels.sdpa_backend import SdpaBackend, SdpaConfig

Backend = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        AttentionMetadata,
        float,
    ],
    torch.Tensor,
]


def default_backend_name(device: torch.device) -> str:
    """cpu on CPU; on CUDA flash-attn if installed, else our Triton kernel, else PyTorch's."""
    if device.type != "cuda":
        return "cpu"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash-attn"
    if importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch-cuda"


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend called `name` (one of BACKEND_NAMES)."""
    if name == "cpu":
        # PyTorch's CPU flash attention for prefill and shared prefixes (matrix products), our
        # paged kernel for each sequence's own decode KV
        return SdpaBackend("cpu", attend_cpu, SdpaConfig(paged_decode=True))
    if name == "cpu-sdpa":
        # PyTorch's CPU flash attention for everything (a call or a gather per sequence)
        return SdpaBackend("cpu-sdpa", attend_cpu)
    if name == "torch-cuda":
        # PyTorch's flash kernel takes no mask: batch only equal-length tails.
        return SdpaBackend("torch-cuda", attend_torch_cuda, SdpaConfig(max_tail_padding=1.0))
    if name == "flash-attn":
        return SdpaBackend("flash-attn", attend_flash_attn, SdpaConfig(max_tail_padding=1.0))
    if name == "triton":
        from server.kernels.triton_backend import TritonBackend

        return TritonBackend()
    raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKEND_NAMES}")
