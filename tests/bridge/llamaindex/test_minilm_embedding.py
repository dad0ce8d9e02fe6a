"""The packaged all-MiniLM-L6-v2 embedding (loads ~90 MB of weights: a few seconds)."""

from __future__ import annotations

import pytest
import torch

from parrot_bridge.llamaindex import MiniLMEmbedding

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedding() -> MiniLMEmbedding:
    return MiniLMEmbedding()


def test_matches_sentence_transformers_published_similarity(embedding: MiniLMEmbedding) -> None:
    # sentence-transformers' documentation prints 0.7553 for this pair with all-MiniLM-L6-v2
    a, b, c = embedding.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]  # fmt: skip
    )
    assert float(a @ b) == pytest.approx(0.7553, abs=5e-4)
    assert float(a @ b) > 0.5 > float(a @ c)


def test_unit_vectors_independent_of_batch_padding(embedding: MiniLMEmbedding) -> None:
    texts = ["short", "a much longer sentence that needs padding for the short one " * 3]
    batch = embedding.embed(texts)
    alone = torch.stack([embedding.embed([t])[0] for t in texts])
    assert batch.shape == (2, 384)
    assert torch.allclose(batch.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(batch, alone, atol=1e-5)
    assert embedding.get_query_embedding("short") == pytest.approx(alone[0].tolist(), abs=1e-5)
    assert len(embedding.get_text_embedding_batch(texts)) == 2
