"""Builds this package's C sources into a shared library on first use, and loads it.

A library is one or more sources compiled together (a kernel may call another's public
function). The system C compiler (gcc -O3 -march=native -fopenmp) builds it in about a second
into ~/.cache/parrot/kernels, keyed by the sources, the headers beside them, the compiler and
the CPU, so a second start loads the cached file. OpenMP resolves to the runtime torch already
loaded, so our kernels and torch's share one thread pool. Without a compiler (or if the build
fails) `load` returns None and callers fall back to torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CACHE_DIR", "FLAGS", "LANES_OVERRIDE", "load", "load_function"]

CACHE_DIR = Path.home() / ".cache" / "parrot" / "kernels"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
# Tests only: build the kernels over vectors of this many lanes instead of the CPU's own
# (vector_math.h), so the AVX-512 tiles (16) are checked on an AVX2 host and the reverse.
LANES_OVERRIDE: int | None = None

log = logging.getLogger(__name__)


def load(source: Path, *more: Path, defines: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The library built from `source` and `more` (.c files), named after `source`, or None
    where it cannot be built here; `defines` are preprocessor macros (`-D`) of this build."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler: %s is not available, using torch instead", source.name)
        return None
    try:
        return ctypes.CDLL(str(_build(compiler, [source, *more], defines)))
    except subprocess.CalledProcessError as exc:
        log.warning("building %s failed: using torch instead\n%s", source.name, exc.stderr)
    except OSError as exc:
        log.warning("loading %s failed (%s): using torch instead", source.name, exc)
    return None


def load_function(
    sources: list[Path], name: str, argtypes: list[Any], restype: Any,
    defines: tuple[str, ...] = (),
) -> ctypes.CDLL | None:
    """`load(*sources)` with the C function `name` given its ctypes signature, or None."""
    lib = load(*sources, defines=defines)
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.argtypes = argtypes
    fn.restype = restype
    return lib


def _build(compiler: str, sources: list[Path], defines: tuple[str, ...] = ()) -> Path:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    headers = sorted({h for s in sources for h in s.parent.glob("*.h")})
    texts = [p.read_text() for p in [*sources, *headers]]
    if LANES_OVERRIDE is not None:
        defines = (*defines, f"PARROT_VF_LANES={LANES_OVERRIDE}")
    flags = [*FLAGS, *(f"-D{d}" for d in defines)]
    key = hashlib.sha256(
        "\0".join([*texts, version, " ".join(flags), _cpu_signature()]).encode()
    ).hexdigest()[:16]
    target = CACHE_DIR / f"{sources[0].stem}-{key}.so"
    if target.exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first uses never load a half-written file.
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, *map(str, sources), "-o", tmp, "-lm"],
            capture_output=True, text=True, check=True,
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
