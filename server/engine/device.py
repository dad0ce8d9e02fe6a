"""Which torch device an engine runs on."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"
_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device_name(name: str) -> None:
    """Raise ValueError unless `name` is "auto", "cpu", "cuda" or "cuda:N"."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto": the first CUDA GPU when torch sees one, else the CPU. Resolved in the process that
    loads the engine (an engine process's own), so a server process never touches CUDA first."""
    import torch  # here: the config checks names without loading torch

    if isinstance(device, str) and device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
