"""`get_response_synthesizer`: LlamaIndex's factory, with graph synthesizers where it helps.

LlamaIndex builds its synthesizer classes directly (no hook on the LLM), so the one step to opt
in is `index.as_query_engine(llm=llm, response_synthesizer=get_response_synthesizer(llm=llm,
response_mode="tree_summarize"))`. Other modes get the stock synthesizer (whose `predict` calls
still keep their templates on the server).
"""

from __future__ import annotations

import inspect
from typing import Any

from llama_index.core import get_response_synthesizer as stock_factory
from llama_index.core.llms import LLM
from llama_index.core.response_synthesizers import BaseSynthesizer, ResponseMode

from parrot_bridge.llamaindex.compact_and_refine import ParrotCompactAndRefine
from parrot_bridge.llamaindex.refine import ParrotRefine
from parrot_bridge.llamaindex.tree_summarize import ParrotTreeSummarize

__all__ = ["get_response_synthesizer"]

_GRAPH_SYNTHESIZERS: dict[ResponseMode, type[BaseSynthesizer]] = {
    ResponseMode.TREE_SUMMARIZE: ParrotTreeSummarize,
    ResponseMode.REFINE: ParrotRefine,
    ResponseMode.COMPACT: ParrotCompactAndRefine,
}


def get_response_synthesizer(
    llm: LLM | None = None,
    response_mode: ResponseMode | str = ResponseMode.COMPACT,
    **kwargs: Any,
) -> BaseSynthesizer:
    """Same arguments as `llama_index.core.get_response_synthesizer`."""
    try:
        mode = ResponseMode(response_mode)
    except ValueError:
        known = ", ".join(m.value for m in ResponseMode)
        raise ValueError(
            f"unknown response_mode {response_mode!r}; expected one of {known}"
        ) from None
    cls = _GRAPH_SYNTHESIZERS.get(mode)
    if cls is None:
        return stock_factory(llm=llm, response_mode=mode, **kwargs)
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in kwargs if k not in inspect.signature(stock_factory).parameters]
    if unknown:
        raise TypeError(f"get_response_synthesizer() got an unexpected argument {unknown[0]!r}")
    return cls(llm=llm, **{k: v for k, v in kwargs.items() if k in params})
