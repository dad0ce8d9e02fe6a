"""y = x @ W (+ bias) on CPU with W kept 4-bit in memory ("Q4 panels", q4_linear.c).

GGUF's Q4_1 stores a weight as d * q + m: q 4 bits, d and m per block of 32 inputs. The
engine used to dequantize such models to float32 panels, so a batch-1 decode step streamed
4 bytes a weight; `Q4Panels` keep q packed two to a byte in 16-column panels (with d and m as
float32 beside them, ~0.75 bytes a weight) and the kernel widens the nibbles in registers,
applying d and m once per block (d * sum x q + m * sum x).

Layout, for `N` outputs (padded to a multiple of 16 with zero columns) and `K` inputs (a
multiple of 32), panel p holding columns 16p .. 16p + 15:
- `qs` uint8 [ceil(N / 16), K, 8]: byte j of (p, k) holds column 16p + j's q in its low nibble
  and column 16p + j + 8's in its high nibble;
- `scales`, `mins` float32 [ceil(N / 16), K / 32, 16]: d and m of (column 16p + c, block b).
The weight is d * q + m in float32. GGUF's d is a float16 (11-bit mantissa) and q <= 15, so
d * q is exact and `dequantize` gives the weights bit for bit (the engine checks them against
its float32 weights with it); the kernel's products equal x @ dequantize(...) up to float32
rounding, its sums running in another order.

The C source is compiled on first use (`native_library`); `available()` says whether it was.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from server.kernels.cpu import native_library
from server.kernels.cpu.packed_linear import holds, unpack

__all__ = ["BLOCK", "PANEL", "Q4Panels", "available", "dequantize", "matches", "pack_q4",
           "q4_linear", "quantize_q4_1"]  # fmt: skip

PANEL = 16  # output columns a panel
BLOCK = 32  # inputs sharing one d and m (GGUF's Q4_1 block)
SOURCE = Path(__file__).with_name("q4_linear.c")


@dataclass(frozen=True)
class Q4Panels:
    """A [K, N] weight (in, out) in Q4 panels; `pack_q4` builds one."""

    qs: torch.Tensor  # uint8 [ceil(N / 16), K, 8]
    scales: torch.Tensor  # float32 [ceil(N / 16), K / 32, 16]
    mins: torch.Tensor  # float32 [ceil(N / 16), K / 32, 16]
    out_features: int

    def __post_init__(self) -> None:
        """The shapes, dtypes and contiguity the kernel reads, checked once, not per call."""
        p, k = -(-self.out_features // PANEL), self.qs.shape[1] if self.qs.dim() == 3 else -1
        if k <= 0 or k % BLOCK:
            raise ValueError(f"Q4Panels: qs must be [ceil(N / 16), K, 8] with K a positive "
                             f"multiple of {BLOCK}, got {tuple(self.qs.shape)}")  # fmt: skip
        expected = {"qs": ((p, k, 8), torch.uint8),
                    "scales": ((p, k // BLOCK, PANEL), torch.float32),
                    "mins": ((p, k // BLOCK, PANEL), torch.float32)}  # fmt: skip
        for name, (shape, dtype) in expected.items():
            t = getattr(self, name)
            if (tuple(t.shape) != shape or t.dtype != dtype or t.device.type != "cpu"
                    or not t.is_contiguous()):  # fmt: skip
                raise ValueError(
                    f"Q4Panels: {name} must be a contiguous {dtype} CPU tensor {shape} for "
                    f"{self.out_features} outputs, got {tuple(t.shape)} {t.dtype} on {t.device}"
                )

    @property
    def in_features(self) -> int:
        return self.qs.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the kernel streams per call: the packed q's, scales and mins."""
        return sum(t.numel() * t.element_size() for t in (self.qs, self.scales, self.mins))


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def pack_q4(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> Q4Panels:
    """Q4 panels from q (uint8 [N, K], values 0-15), scales and mins (float32 [N, K / 32]):
    the weight W[k, n] = scales[n, k // 32] * q[n, k] + mins[n, k // 32]."""
    if q.dim() != 2 or q.dtype != torch.uint8 or q.device.type != "cpu":
        raise ValueError(
            f"pack_q4: q must be a 2-D uint8 CPU tensor [N, K], got {tuple(q.shape)} "
            f"{q.dtype} on {q.device}"
        )
    n, k = q.shape
    if k == 0 or k % BLOCK:
        raise ValueError(f"pack_q4: K (q's second dimension) must be a positive multiple of "
                         f"{BLOCK}, got {k}")  # fmt: skip
    for name, t in (("scales", scales), ("mins", mins)):
        if tuple(t.shape) != (n, k // BLOCK) or t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(
                f"pack_q4: {name} must be a float32 CPU tensor {(n, k // BLOCK)} for q "
                f"{(n, k)}, got {tuple(t.shape)} {t.dtype} on {t.device}"
            )
    if n and int(q.max()) > 15:
        raise ValueError(f"pack_q4: q values must be 0-15, got up to {int(q.max())}")
    panels = -(-n // PANEL)
    pad = panels * PANEL - n
    qp = torch.nn.functional.pad(q, (0, 0, 0, pad)).view(panels, PANEL, k)  # [P, 16, K]
    qs = (qp[:, :8] | (qp[:, 8:] << 4)).transpose(1, 2).contiguous()  # [P, K, 8]

    def blocks(t: torch.Tensor) -> torch.Tensor:  # [N, K / 32] -> [P, K / 32, 16]
        padded = torch.nn.functional.pad(t, (0, 0, 0, pad))
        return padded.view(panels, PANEL, k // BLOCK).transpose(1, 2).contiguous()

    return Q4Panels(qs, blocks(scales), blocks(mins), n)


def dequantize(panels: Q4Panels) -> torch.Tensor:
    """The float32 weight [K, N] the panels hold, bit for bit."""
    p, k, _ = panels.qs.shape
    q = torch.cat([panels.qs & 15, panels.qs >> 4], dim=2).float()  # [P, K, 16]
    d = panels.scales.repeat_interleave(BLOCK, dim=1)  # [P, K, 16]
    m = panels.mins.repeat_interleave(BLOCK, dim=1)
    w = q * d + m  # d * q exact for float16 scales: one rounding, as an fma
    return w.transpose(0, 1).reshape(k, p * PANEL)[:, : panels.out_features].contiguous()


def matches(panels: Q4Panels, float_panels: torch.Tensor) -> bool:
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
    return bool(lib.parrot_q4_matches(
        panels.qs.data_ptr(), panels.scales.data_ptr(), panels.mins.data_ptr(),
        float_panels.data_ptr(), panels.in_features, panels.out_features, torch.get_num_threads(),
    ))  # fmt: skip


def quantize_q4_1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 of a float32 [N, K] weight (K a multiple of 32), per block of 32 inputs:
    d = (max - min) / 15 and m = min, both rounded to float16, q = round((w - m) / d) clamped
    to 0-15 (0 where d is 0). Returns q (uint8 [N, K]), scales and mins (float32 [N, K / 32])."""
    if weight.dim() != 2 or weight.shape[1] % BLOCK or not weight.is_floating_point():
        raise ValueError(f"quantize_q4_1: expected a float [N, K] weight with K a multiple of "
                         f"{BLOCK}, got {tuple(weight.shape)} {weight.dtype}")  # fmt: skip
    n, k = weight.shape
    w = weight.float().reshape(n, k // BLOCK, BLOCK)
    lo, hi = w.amin(dim=2), w.amax(dim=2)
    d = ((hi - lo) / 15).half().float()
    m = lo.half().float()
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.round((w - m[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(n, k), d, m


def q4_linear(
    x: torch.Tensor, panels: Q4Panels, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] @ W [K, N] (+ bias [N]) -> float32 [M, N], W given as Q4 panels."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the Q4 linear kernel could not be built on this machine")
    n, k = panels.out_features, panels.in_features
    if x.dim() != 2 or x.shape[1] != k or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(
            f"q4_linear: x must be a float32 CPU tensor [M, {k}] for panels of {k} inputs, got "
            f"{tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype != torch.float32
                             or bias.device.type != "cpu"):  # fmt: skip
        raise ValueError(f"q4_linear: bias must be a float32 CPU tensor ({n},), got "
                         f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")  # fmt: skip
    x = x.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    m = x.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    if m and n:
        lib.parrot_q4_linear(
            x.data_ptr(), m, k, panels.qs.data_ptr(), panels.scales.data_ptr(),
            panels.mins.data_ptr(), n, None if bias is None else bias.data_ptr(), y.data_ptr(),
            torch.get_num_threads(),
        )
    return y


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native_library.load_function(
        [SOURCE], "parrot_q4_linear",
        [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ],
        None,
    )
    if lib is not None:
        lib.parrot_q4_matches.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
            ctypes.c_long, ctypes.c_int,
        ]
        lib.parrot_q4_matches.restype = ctypes.c_int
    return lib
