"""y = x @ W (+ bias) on CPU, float32, with W packed into 16-column panels (packed_linear.c).

At decode batch sizes MKL's small-M products reach a third of this machine's read bandwidth and
use one core; on AMD CPUs they also miss the AVX-512 paths. The packed kernel streams the
weights with every core and reaches the FMA peak at prefill sizes, so the engine uses it for
every CPU float32 linear layer (`available()` says whether it could be built here).

The C source is compiled on first use (`native_library`); without a compiler the engine falls
back to torch's matmul.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from server.kernels.cpu import native_library

__all__ = ["PANEL", "available", "holds", "pack", "packed_linear", "packed_shape", "unpack"]

PANEL = 16
SOURCE = Path(__file__).with_name("packed_linear.c")


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def packed_shape(k: int, n: int) -> tuple[int, int, int]:
    """The panels' shape for a [K, N] weight."""
    return (-(-n // PANEL), k, PANEL)


def holds(panels: torch.Tensor, k: int, n: int) -> bool:
    """Whether `panels` are float32 CPU panels of a [K, N] weight (`packed_shape(k, n)`)."""
    return (tuple(panels.shape) == packed_shape(k, n) and panels.dtype == torch.float32
            and panels.device.type == "cpu")  # fmt: skip


def pack(weight_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[K, N] float32 weight (in, out) -> panels [ceil(N / 16), K, 16], zero-padded columns;
    written into `out` (contiguous float32 CPU, `packed_shape(K, N)`) when given, e.g. a view
    of one buffer that holds a model's panels in the order its steps read them."""
    if weight_t.dim() != 2 or weight_t.dtype != torch.float32 or weight_t.device.type != "cpu":
        raise ValueError(
            f"pack expects a 2-D float32 CPU tensor, got {tuple(weight_t.shape)} "
            f"{weight_t.dtype} on {weight_t.device}"
        )
    k, n = weight_t.shape
    shape = packed_shape(k, n)
    if out is None:
        panels = torch.zeros(shape, dtype=torch.float32)
    elif (tuple(out.shape) != shape or out.dtype != torch.float32 or out.device.type != "cpu"
          or not out.is_contiguous()):
        raise ValueError(
            f"pack: out must be a contiguous float32 CPU tensor {shape}, got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    else:
        panels = out
        if n % PANEL:
            panels[-1].zero_()  # the padded columns
    full = n // PANEL
    if full:
        panels[:full].copy_(weight_t[:, : full * PANEL].reshape(k, full, PANEL).transpose(0, 1))
    if n % PANEL:
        panels[full, :, : n % PANEL].copy_(weight_t[:, full * PANEL :])
    return panels


def unpack(panels: torch.Tensor, n: int) -> torch.Tensor:
    """The [K, N] weight back from its panels."""
    num_panels, k, _ = panels.shape
    return panels.transpose(0, 1).reshape(k, num_panels * PANEL)[:, :n].contiguous()


def packed_linear(
    x: torch.Tensor, panels: torch.Tensor, n: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] @ W [K, N] (+ bias [N]) -> [M, N], W given as `pack(W)`."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the packed linear kernel could not be built on this machine")
    x = x.contiguous()
    m, k = x.shape
    if panels.shape[1] != k or panels.shape[0] != -(-n // PANEL) or x.dtype != torch.float32:
        raise ValueError(
            f"packed_linear: x {tuple(x.shape)} {x.dtype} does not match panels "
            f"{tuple(panels.shape)} for {n} outputs"
        )
    y = torch.empty(m, n, dtype=torch.float32)
    if m:
        lib.parrot_packed_linear(
            x.data_ptr(), m, k, panels.data_ptr(), n,
            None if bias is None else bias.data_ptr(), y.data_ptr(), torch.get_num_threads(),
        )
    return y


@functools.cache
def _library() -> ctypes.CDLL | None:
    return native_library.load_function(
        [SOURCE], "parrot_packed_linear",
        [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ],
        None,
    )
