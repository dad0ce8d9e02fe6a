"""What an engine process tells the server of its engine once it is ready (torch-free: the
server unpickles it without loading the engine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the parent needs to know of the engine it cannot see."""

    name: str
    max_model_len: int
    vocab_size: int
    kv_tokens: int
    latency_priority: int
    model_folder: str  # the parent loads the same tokenizer from here
    eos_token_ids: tuple[int, ...]
    threads: int  # its compute threads (torch's count, once set)
    # the tokenizer's backend as JSON where the folder has no tokenizer.json (transformers
    # converted its other files, which in the server would import torch); else None
    tokenizer_json: str | None = None
