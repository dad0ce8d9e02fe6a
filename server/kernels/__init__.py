"""Attention kernels: one entry point (`attention`) over a paged KV cache, with shared-prefix
(cascade) decode, behind backends chosen by device.

The public names load on first use, so that light modules of this package (backend names, the
cascade rule) can be imported without torch: the server checks its engines' settings with them
in a process that never runs a kernel.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from server.lazy_names import lazy_names

if TYPE_CHECKING:
    from server.kernels.attention import attention
    from server.kernels.cascade_config import CascadeConfig
    from server.kernels.merge import merge_attention_states
    from server.kernels.metadata import AttentionMetadata, SharedPrefix, build_attention_metadata

_HOMES = {
    "AttentionMetadata": "server.kernels.metadata",
    "CascadeConfig": "server.kernels.cascade_config",
    "SharedPrefix": "server.kernels.metadata",
    "attention": "server.kernels.attention",
    "build_attention_metadata": "server.kernels.metadata",
    "merge_attention_states": "server.kernels.merge",
}

__all__ = [
    "AttentionMetadata",
    "CascadeConfig",
    "SharedPrefix",
    "attention",
    "build_attention_metadata",
    "merge_attention_states",
]


__getattr__, __dir__ = lazy_names(__name__, _HOMES)


class _Package(types.ModuleType):
    """This package, with `attention` kept the entry point: the import system binds a submodule
    onto its package once it loads, and the submodule `attention` would otherwise replace the
    function of that name whenever it was imported directly before the function was asked for."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "attention" and isinstance(value, types.ModuleType):
            value = value.attention
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
