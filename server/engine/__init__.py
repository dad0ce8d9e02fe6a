"""The torch engine: Llama-family models over a paged KV cache with continuous batching."""

from server.engine.async_engine import AsyncLLMEngine, EngineError
from server.engine.config import EngineConfig
from server.engine.llm_engine import LLMEngine
from server.engine.outputs import CompletionOutput, EngineStats, JobOutput, TokenLogprob
from server.engine.sampling_params import SamplingParams

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
