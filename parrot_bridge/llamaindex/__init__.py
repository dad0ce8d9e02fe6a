"""LlamaIndex on a Parrot server.

    from llama_index.core import Settings, VectorStoreIndex
    from parrot_bridge.llamaindex import MiniLMEmbedding, Parrot, get_response_synthesizer

    Settings.llm = Parrot(base_url="http://127.0.0.1:9000", max_tokens=128)
    Settings.embed_model = MiniLMEmbedding()
    index = VectorStoreIndex.from_documents(docs)
    engine = index.as_query_engine(
        response_synthesizer=get_response_synthesizer(response_mode="tree_summarize"))

`Parrot` alone keeps prompt templates on the server (prefix sharing; concurrent `apredict`s as
one graph); the synthesizers make each tree-summarize query or refine chain one graph.
"""

from parrot_bridge.llamaindex.compact_and_refine import ParrotCompactAndRefine
from parrot_bridge.llamaindex.llm import Parrot
from parrot_bridge.llamaindex.marked_prompt import Joined, UnmarkablePromptError
from parrot_bridge.llamaindex.minilm_embedding import MiniLMEmbedding
from parrot_bridge.llamaindex.refine import ParrotRefine
from parrot_bridge.llamaindex.synthesizer_factory import get_response_synthesizer
from parrot_bridge.llamaindex.tree_summarize import ParrotTreeSummarize

__all__ = [
    "Joined",
    "MiniLMEmbedding",
    "Parrot",
    "ParrotCompactAndRefine",
    "ParrotRefine",
    "ParrotTreeSummarize",
    "UnmarkablePromptError",
    "get_response_synthesizer",
]
