"""Which torch dtype a name (`--dtype`) stands for."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Names torch has as dtypes (tests/engine/test_dtype_name.py checks each): a server whose engines
# run in processes of their own checks these without loading torch; any other name is torch's
# to judge.
COMMON_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "float", "half", "double"})


def check_dtype_name(name: str) -> None:
    """ValueError unless `name` names a torch dtype; torch is loaded only for an uncommon name."""
    if name not in COMMON_DTYPES:
        parse_dtype(name)


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` ("float32", "bfloat16", ...); ValueError if none is."""
    import torch  # here: `check_dtype_name` takes the common names without it

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must name a torch dtype (e.g. float32, bfloat16), got {name!r}")
    return dtype
