"""y = x @ W (+ bias) on CPU, float32, with W packed into 16-column panels (packed_linear.c).

At decode batch sizes MKL's small-M products reach a third of this machine's read bandwidth and
use one core; on AMD CPUs they also miss the AVX-512 paths. The packed kernel streams the
weights with every core and reaches the FMA peak at prefill sizes, so the engine uses it for
every CPU float32 linear layer (`available()` says whether it could be built here).

The C source is compiled with the system's C compiler on first use (well under a second) into
~/.cache/parrot/kernels, keyed by the source, the compiler and the CPU; without a compiler the
engine falls back to torch's matmul.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["PANEL", "available", "pack", "packed_linear", "unpack"]

PANEL = 16
SOURCE = Path(__file__).with_name("packed_linear.c")
CACHE_DIR = Path.home() / ".cache" / "parrot" / "kernels"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    return _library() is not None


def pack(weight_t: torch.Tensor) -> torch.Tensor:
    """[K, N] float32 weight (in, out) -> panels [ceil(N / 16), K, 16], zero-padded columns."""
    if weight_t.dim() != 2 or weight_t.dtype != torch.float32 or weight_t.device.type != "cpu":
        raise ValueError(
            f"pack expects a 2-D float32 CPU tensor, got {tuple(weight_t.shape)} "
            f"{weight_t.dtype} on {weight_t.device}"
        )
    k, n = weight_t.shape
    num_panels = -(-n // PANEL)
    panels = torch.zeros(num_panels, k, PANEL, dtype=torch.float32)
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
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler: CPU linear layers use torch.mm (slower at small batch)")
        return None
    try:
        path = _build(compiler)
        lib = ctypes.CDLL(str(path))
    except subprocess.CalledProcessError as exc:
        log.warning("building the packed linear kernel failed: using torch.mm\n%s", exc.stderr)
        return None
    except OSError as exc:
        log.warning("loading the packed linear kernel failed (%s): using torch.mm", exc)
        return None
    fn = lib.parrot_packed_linear
    fn.argtypes = [
        ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    fn.restype = None
    return lib


def _build(compiler: str) -> Path:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_signature()]).encode()
    ).hexdigest()[:16]
    target = CACHE_DIR / f"packed_linear-{key}.so"
    if target.exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first uses never load a half-written file.
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=True
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))
