"""The torch engine: Llama-family models over a paged KV cache with continuous batching.

The public names load on first use, so that light modules of this package (device names,
sampling parameters) can be imported without torch: the server checks its arguments and starts
its engines' fork server before it pays for torch's import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.lazy_names import lazy_names

if TYPE_CHECKING:
    from server.engine.async_engine import AsyncLLMEngine
    from server.engine.config import EngineConfig
    from server.engine.engine_error import EngineError
    from server.engine.llm_engine import LLMEngine
    from server.engine.outputs import CompletionOutput, EngineStats, JobOutput, TokenLogprob
    from server.engine.sampling_params import SamplingParams

_HOMES = {
    "AsyncLLMEngine": "server.engine.async_engine",
    "EngineError": "server.engine.engine_error",
    "EngineConfig": "server.engine.config",
    "LLMEngine": "server.engine.llm_engine",
    "CompletionOutput": "server.engine.outputs",
    "EngineStats": "server.engine.outputs",
    "JobOutput": "server.engine.outputs",
    "TokenLogprob": "server.engine.outputs",
    "SamplingParams": "server.engine.sampling_params",
}

__all__ = [
    "AsyncLLMEngine",
    "CompletionOutput",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "JobOutput",
    "LLMEngine",
    "SamplingParams",
    "TokenLogprob",
]


__getattr__, __dir__ = lazy_names(__name__, _HOMES)
