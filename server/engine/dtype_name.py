"""Which torch dtype a name (`--dtype`) stands for."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Every name `--dtype` takes, with the torch dtype it names (tests/engine/test_dtype_name.py
# checks each): torch's floating-point dtypes that the engine runs in, written out so that a
# server whose engines run in processes of their own checks a name without loading torch. The
# other torch dtypes fail as the model loads or takes its first step (integer and quantized
# weights cannot be parameters; float8, float4 and complex ones have no matmul or attention).
DTYPE_NAMES = {
    "float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "float64": "float64", "double": "float64",
}  # fmt: skip


def check_dtype_name(name: str) -> None:
    """ValueError unless `name` names a dtype the engine runs in; torch is not loaded."""
    if name not in DTYPE_NAMES:
        raise ValueError(
            f"dtype must name a torch dtype the engine runs in ({', '.join(DTYPE_NAMES)}), "
            f"got {name!r}"
        )


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` ("float32", "bfloat16", ...); ValueError if the engine
    does not run in one of that name."""
    check_dtype_name(name)
    import torch  # here: `check_dtype_name` needs no torch

    return getattr(torch, DTYPE_NAMES[name])
