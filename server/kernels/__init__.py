"""Attention kernels: one entry point (`attention`) over a paged KV cache, with shared-prefix
(cascade) decode, behind backends chosen by device."""

from server.kernels.attention import attention
from server.kernels.cascade_config import CascadeConfig
from server.kernels.merge import merge_attention_states
from server.kernels.metadata import AttentionMetadata, SharedPrefix, build_attention_metadata

__all__ = [
    "AttentionMetadata",
    "CascadeConfig",
    "SharedPrefix",
    "attention",
    "build_attention_metadata",
    "merge_attention_states",
]
