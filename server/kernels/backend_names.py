"""The attention backends' names (torch-free: engine settings are checked with them in a server
process that never loads the kernels)."""

from __future__ import annotations

BACKEND_NAMES = ("cpu", "cpu-sdpa", "triton", "flash-attn", "torch-cuda")
