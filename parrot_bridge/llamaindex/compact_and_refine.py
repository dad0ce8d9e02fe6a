"""Compact-and-refine (LlamaIndex's default mode): stock compaction, then `ParrotRefine`'s chain."""

from __future__ import annotations

from llama_index.core.response_synthesizers import CompactAndRefine

from parrot_bridge.llamaindex.refine import ParrotRefine

__all__ = ["ParrotCompactAndRefine"]


class ParrotCompactAndRefine(CompactAndRefine, ParrotRefine):
    """`CompactAndRefine` packs the chunks, then its `super().get_response` is `ParrotRefine`'s."""
