"""Model implementations: the Llama family (Llama, Mistral, Qwen2, SmolLM) over a paged KV cache."""

from server.engine.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from server.engine.models.llama import KVCache, LlamaForCausalLM

__all__ = ["SUPPORTED_ARCHITECTURES", "KVCache", "LlamaForCausalLM", "ModelConfig"]
