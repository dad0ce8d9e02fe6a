"""y = x @ W (+ bias) on CPU with W in 8-bit "Q8 panels" (q8_linear.c).

The panels are GGUF Q8_0 blocks re-laid at load time: output columns in panels of 16 (as
packed_linear's), int8 q [ceil(N / 16), K, 16] and float32 scales d [ceil(N / 16), K / B, 16],
one d per B = 32 inputs of a column; W[k, n] = d * q in float32, exact for Q8_0's float16
scales. Blocks of B = 16 hold GGUF's Q6_K weights (6-bit q, d = super-block scale x 8-bit
sub-scale, exact in float32; d * q rounded once, as gguf-py's dequantize does). At decode batch
sizes a linear layer streams its weights once per step, so a quarter of float32's bytes (plus
an eighth or a quarter of a byte a weight of scales) is what the kernel is for.

The C source is compiled on first use (`native_library`); `available()` says whether it could be
built here.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from server.kernels.cpu import native_library
from server.kernels.cpu.packed_linear import holds, unpack

__all__ = ["BLOCK", "PANEL", "Q8Panels", "available", "dequantize", "matches", "pack_q8",
           "q8_linear", "quantize_q8_0"]

PANEL = 16
BLOCK = 32  # Q8_0's inputs per scale
BLOCKS = (32, 16)  # the kernel's: Q8_0's and Q6_K's
SOURCE = Path(__file__).with_name("q8_linear.c")


@dataclass(frozen=True)
class Q8Panels:
    """An [K, N] weight as Q8 panels: `qs` int8 [ceil(N / 16), K, 16], `scales` float32
    [ceil(N / 16), K / block, 16], and for the affine types (Q5_1, Q5_K) `mins` shaped as
    `scales` (weight = d * q + m), else None; columns past `out_features` are zero."""

    qs: torch.Tensor
    scales: torch.Tensor
    out_features: int
    mins: torch.Tensor | None = None

    @property
    def block(self) -> int:
        """Inputs sharing a scale: 32 (Q8_0) or 16 (Q6_K)."""
        return self.qs.shape[1] // self.scales.shape[1] if self.scales.shape[1] else BLOCK

    @property
    def in_features(self) -> int:
        return self.qs.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes a product streams: the int8 weights, their scales and mins."""
        mins = 0 if self.mins is None else self.mins.numel() * 4
        return self.qs.numel() * self.qs.element_size() + self.scales.numel() * 4 + mins


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def pack_q8(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None) -> Q8Panels:
    """int8 q [N, K] and float32 scales [N, K / B] (GGUF Q8_0's layout, B = 32: one d per 32
    inputs of an output row; B = 16 for Q6_K's), and mins shaped as the scales for the affine
    types -> Q8 panels, zero-padded to a multiple of 16 columns."""
    if q.dim() != 2 or q.dtype != torch.int8 or q.device.type != "cpu":
        raise ValueError(
            f"pack_q8: q must be a 2-D int8 CPU tensor [N, K], got {tuple(q.shape)} "
            f"{q.dtype} on {q.device}"
        )
    n, k = q.shape
    # a scale per 16 inputs where the scales say so (Q6_K's), else per 32 (Q8_0's)
    block = 16 if k and scales.dim() == 2 and scales.shape[1] == k // 16 else BLOCK
    if k % block:
        raise ValueError(f"pack_q8: K = {k} inputs is not a multiple of {block}")
    if (tuple(scales.shape) != (n, k // block) or scales.dtype != torch.float32
            or scales.device.type != "cpu"):
        raise ValueError(
            f"pack_q8: scales must be a float32 CPU tensor {(n, k // block)} for q "
            f"{(n, k)}, got {tuple(scales.shape)} {scales.dtype} on {scales.device}"
        )
    if mins is not None and (tuple(mins.shape) != tuple(scales.shape)
                             or mins.dtype != torch.float32 or mins.device.type != "cpu"):
        raise ValueError(
            f"pack_q8: mins must be a float32 CPU tensor {(n, k // block)} as the scales, got "
            f"{tuple(mins.shape)} {mins.dtype} on {mins.device}"
        )
    num_panels = -(-n // PANEL)
    pad = num_panels * PANEL - n
    qp = torch.nn.functional.pad(q, (0, 0, 0, pad)) if pad else q
    sp = torch.nn.functional.pad(scales, (0, 0, 0, pad)) if pad else scales
    # [P * 16, K] -> [P, 16, K] -> [P, K, 16]
    qs = qp.reshape(num_panels, PANEL, k).transpose(1, 2).contiguous()
    sc = sp.reshape(num_panels, PANEL, k // block).transpose(1, 2).contiguous()
    mn = None
    if mins is not None:
        mp = torch.nn.functional.pad(mins, (0, 0, 0, pad)) if pad else mins
        mn = mp.reshape(num_panels, PANEL, k // block).transpose(1, 2).contiguous()
    return Q8Panels(qs, sc, n, mn)


def dequantize(panels: Q8Panels) -> torch.Tensor:
    """The [K, N] float32 weight the kernel multiplies by: d * q (+ m) in float32, d * q
    exact, so that adding m rounds once, as the kernel's FMA does."""
    num_panels, k, _ = panels.qs.shape
    d = panels.scales.repeat_interleave(panels.block, dim=1)  # [P, K, 16]
    w = panels.qs.to(torch.float32) * d
    if panels.mins is not None:
        w = w + panels.mins.repeat_interleave(panels.block, dim=1)
    return w.transpose(0, 1).reshape(k, num_panels * PANEL)[:, : panels.out_features].contiguous()


def matches(panels: Q8Panels, float_panels: torch.Tensor) -> bool:
    """Whether `panels` hold exactly the weight packed in `float_panels` (packed_linear's
    [ceil(N / 16), K, 16] float32 panels) in its first N = `panels.out_features` columns:
    `dequantize(panels)` equal to them, checked in one pass over both by the kernel library
    (torch where it is not built). The panels' padding hides whether the float32 weight has more
    columns up to the next 16: the caller checks N."""
    if not holds(float_panels, panels.in_features, panels.out_features):
        return False
    lib = _library()
    if lib is None:
        weight_t = unpack(float_panels, panels.out_features)
        return torch.equal(dequantize(panels), weight_t)
    float_panels = float_panels.contiguous()
    return bool(lib.parrot_q8_matches(
        panels.qs.data_ptr(), panels.scales.data_ptr(), _mins_ptr(panels), panels.block,
        float_panels.data_ptr(), panels.in_features, panels.out_features,
        torch.get_num_threads(),
    ))  # fmt: skip


def quantize_q8_0(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [N, K] -> (int8 q [N, K], float32 scales [N, K / 32]) as GGUF's Q8_0 (ggml's
    `quantize_row_q8_0_ref`): per block of 32 inputs d = max|w| / 127, q = w * (1 / d) rounded
    half away from zero (0 where d = 0), in float32; the scale is stored as float16, so the
    returned d is d rounded to float16 and back. `block=16`: the same over 16 inputs (panels of
    Q6_K's block size). For tests and benchmarks."""
    if (weight.dim() != 2 or block not in BLOCKS or weight.shape[1] % block
            or not weight.is_floating_point()):  # fmt: skip
        raise ValueError(
            f"quantize_q8_0 expects a 2-D float tensor [N, K] with K a multiple of {block} "
            f"(the block: 32 or 16), got {tuple(weight.shape)} {weight.dtype}"
        )
    n, k = weight.shape
    blocks = weight.to(torch.float32).reshape(n, k // block, block)
    d = blocks.abs().amax(dim=2) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    v = (blocks * inv[..., None]).double()  # the float32 product, rounded exactly in float64
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp(-127, 127)
    return q.to(torch.int8).reshape(n, k), d.to(torch.float16).to(torch.float32)


def q8_linear(
    x: torch.Tensor, panels: Q8Panels, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] @ W [K, N] (+ bias [N]) -> [M, N] float32, W given as Q8 panels."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the q8 linear kernel could not be built on this machine")
    x = x.contiguous()
    n, k = panels.out_features, panels.in_features
    num_panels = -(-n // PANEL)
    if (
        x.dim() != 2 or x.shape[1] != k or x.dtype != torch.float32 or x.device.type != "cpu"
        or panels.block not in BLOCKS or k % panels.block
        or tuple(panels.qs.shape) != (num_panels, k, PANEL)
        or panels.qs.dtype != torch.int8 or not panels.qs.is_contiguous()
        or tuple(panels.scales.shape) != (num_panels, k // panels.block, PANEL)
        or panels.scales.dtype != torch.float32 or not panels.scales.is_contiguous()
        or (panels.mins is not None and (
            panels.mins.shape != panels.scales.shape or panels.mins.dtype != torch.float32
            or not panels.mins.is_contiguous()))
    ):
        raise ValueError(
            f"q8_linear: x {tuple(x.shape)} {x.dtype} does not match the panels (qs "
            f"{tuple(panels.qs.shape)} {panels.qs.dtype}, scales "
            f"{tuple(panels.scales.shape)} {panels.scales.dtype}) for {n} outputs"
        )
    if bias is not None and (
        tuple(bias.shape) != (n,) or bias.dtype != torch.float32 or bias.device.type != "cpu"
    ):
        raise ValueError(
            f"q8_linear: bias must be a float32 CPU tensor ({n},), got {tuple(bias.shape)} "
            f"{bias.dtype}"
        )
    if bias is not None:
        bias = bias.contiguous()
    m = x.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    if m:
        lib.parrot_q8_linear(
            x.data_ptr(), m, k, panels.qs.data_ptr(), panels.scales.data_ptr(),
            _mins_ptr(panels), panels.block, n, None if bias is None else bias.data_ptr(),
            y.data_ptr(), torch.get_num_threads(),
        )
    return y


def _mins_ptr(panels: Q8Panels) -> int | None:
    return None if panels.mins is None else panels.mins.data_ptr()


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native_library.load_function(
        [SOURCE], "parrot_q8_linear",
        [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_int,
        ],
        None,
    )
    if lib is not None:
        lib.parrot_q8_matches.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p,
            ctypes.c_long, ctypes.c_long, ctypes.c_int,
        ]
        lib.parrot_q8_matches.restype = ctypes.c_int
    return lib
