"""CPU kernels compiled on first use: a packed-weight float32 linear layer."""

from server.kernels.cpu.packed_linear import PANEL, available, pack, packed_linear, unpack

__all__ = ["PANEL", "available", "pack", "packed_linear", "unpack"]
