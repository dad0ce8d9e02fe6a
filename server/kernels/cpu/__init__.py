"""CPU kernels in C, compiled on first use: the packed-weight float32 linear layer (exported
here), paged decode and prefill attention, and the decoder stack that runs a step's layers in
one call (import their modules). `suited()`: whether this CPU runs them faster than torch."""

from server.kernels.cpu.packed_linear import (
    PANEL,
    available,
    pack,
    packed_linear,
    packed_shape,
    unpack,
)
from server.kernels.cpu.vector_width import suited

__all__ = ["PANEL", "available", "pack", "packed_linear", "packed_shape", "suited", "unpack"]
