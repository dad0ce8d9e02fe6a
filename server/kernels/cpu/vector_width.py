"""Whether this CPU has the vector width the C kernels are written for."""

from __future__ import annotations

import torch

__all__ = ["suited"]


def suited() -> bool:
    """x86 with AVX-512 or AVX2: the 16- and 8-lane vectors of vector_math.h live in registers
    there. Elsewhere (x86 without AVX2, Arm) GCC has no register for an 8-lane vector and keeps
    its values on the stack: the kernels build and compute right but run slower than torch (an
    SSE-only build on an AVX2 Zen 3: paged decode 16 x 2048 9.9 ms against 1.6-1.9 native and
    7.3 for PyTorch's kernel; a cascade step 23 ms against 0.94), so the engine uses torch's
    matmul and attention there."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith("AVX512") or capability == "AVX2"
