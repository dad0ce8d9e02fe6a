"""Tree summarize as one graph per query.

The stock synthesizer summarizes each packed chunk, then summarizes the summaries (repacked to
the context window), level after level, each level a round of requests from the client. Here a
level's calls form one task group, and when the summaries will fit one chunk (each is at most
`max_tokens` long), the final call is recorded too, reading the summaries' variables: the whole
query is one submission and the final call starts on the server.

Answers equal the stock synthesizer's: the stock repacking strips each summary and joins them
with a blank line, and the final call reads the same (`Joined(strip=True)`: the server strips
each summary as it fills the prompt). Once the summaries are known, the stock packing is
recomputed from them; if it differs from the one wired on the server (an empty summary, which
the stock packing drops, or more text than one chunk holds), the next level is computed the
stock way from the summaries. The speculative final call was then wasted work, so after such a
miss the synthesizer stops wiring the next level (each level is then one graph) until
`speculate` is set again.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import aclosing
from typing import Any

from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.response_synthesizers import TreeSummarize
from llama_index.core.types import RESPONSE_TEXT_TYPE

from parrot_bridge.llamaindex.checked_stream import achecked_stream, checked_stream
from parrot_bridge.llamaindex.llm import Parrot
from parrot_bridge.llamaindex.marked_prompt import Joined, UnmarkablePromptError
from parrot_bridge.session import Session
from parrot_bridge.variable import SemanticVariable

__all__ = ["ParrotTreeSummarize"]

_SEPARATOR = "\n\n"  # how the stock repacking joins texts


class ParrotTreeSummarize(TreeSummarize):
    """`TreeSummarize` whose levels run as one Semantic Variable graph on a `Parrot` server.

    Falls back to the stock behaviour for other LLMs, structured outputs and output parsers.
    """

    speculate: bool = True  # wire the next level to this level's outputs (see module doc)

    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        if not self._graphable():
            return super().get_response(query_str, text_chunks, **response_kwargs)
        template = self._summary_template.partial_format(query_str=query_str)
        chunks = self._prompt_helper.repack(template, text_chunks=text_chunks, llm=self._llm)
        session = self._parrot.session(name="tree_summarize")
        try:
            summaries, final = self._record(session, template, chunks, response_kwargs)
        except UnmarkablePromptError:
            session.close()
            return super().get_response(query_str, text_chunks, **response_kwargs)
        if final is None:  # the next level's packing is unknown until the summaries are
            try:
                texts = [v.get(criteria="throughput") for v in summaries]
            finally:
                session.close()
            return self.get_response(query_str, texts, **response_kwargs)
        if self._streaming:
            return self._stream(session, template, query_str, summaries, final, response_kwargs)
        try:
            answer = final.get()
            texts = [v.get() for v in summaries]
        finally:
            session.close()
        if summaries and not self._packs_into_one(template, texts):
            self.speculate = False
            return self.get_response(query_str, texts, **response_kwargs)
        return answer

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        if not self._graphable():
            return await super().aget_response(query_str, text_chunks, **response_kwargs)
        template = self._summary_template.partial_format(query_str=query_str)
        chunks = self._prompt_helper.repack(template, text_chunks=text_chunks, llm=self._llm)
        session = self._parrot.session(name="tree_summarize")
        try:
            summaries, final = self._record(session, template, chunks, response_kwargs)
        except UnmarkablePromptError:
            await session.aclose()
            return await super().aget_response(query_str, text_chunks, **response_kwargs)
        if final is None:
            try:
                texts = [await v.aget(criteria="throughput") for v in summaries]
            finally:
                await session.aclose()
            return await self.aget_response(query_str, texts, **response_kwargs)
        if self._streaming:
            return self._astream(session, template, query_str, summaries, final, response_kwargs)
        try:
            answer = await final.aget()
            texts = [await v.aget() for v in summaries]
        finally:
            await session.aclose()
        if summaries and not self._packs_into_one(template, texts):
            self.speculate = False
            return await self.aget_response(query_str, texts, **response_kwargs)
        return answer

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _parrot(self) -> Parrot:
        assert isinstance(self._llm, Parrot)
        return self._llm

    def _graphable(self) -> bool:
        return (
            isinstance(self._llm, Parrot)
            and self._output_cls is None
            and self._llm.output_parser is None
        )

    def _record(
        self,
        session: Session,
        template: BasePromptTemplate,
        chunks: list[str],
        kwargs: dict[str, Any],
    ) -> tuple[list[SemanticVariable], SemanticVariable | None]:
        """The level's summary calls and, when it will fit, the final call reading them."""
        llm = self._parrot
        if len(chunks) == 1:
            return [], llm.call(session, template, context_str=chunks[0], **kwargs)
        summaries = [llm.call(session, template, context_str=c, **kwargs) for c in chunks]
        if not (self.speculate and self._next_level_fits(template, len(summaries))):
            return summaries, None
        joined = Joined(summaries, _SEPARATOR, strip=True)  # as the stock repacking strips them
        return summaries, llm.call(session, template, context_str=joined, **kwargs)

    def _next_level_fits(self, template: BasePromptTemplate, n: int) -> bool:
        splitter = self._prompt_helper.get_text_splitter_given_prompt(template, llm=self._llm)
        # each summary is at most max_tokens model tokens; the joints cost a token or two
        return n * (self._parrot.max_tokens + 2) <= splitter.chunk_size

    def _packs_into_one(self, template: BasePromptTemplate, texts: list[str]) -> bool:
        """Whether the stock packing of `texts` is the one prompt the final call was wired with.

        An empty summary makes the wired join differ (the stock packing drops it)."""
        packed = self._prompt_helper.repack(template, text_chunks=texts, llm=self._llm)
        return packed == [_SEPARATOR.join(t.strip() for t in texts)]

    def _stream(
        self,
        session: Session,
        template: BasePromptTemplate,
        query_str: str,
        summaries: list[SemanticVariable],
        final: SemanticVariable,
        kwargs: dict[str, Any],
    ) -> Generator[str, None, None]:
        texts: list[str] = []

        # the final call starts only once every summary is set: check the packing then
        def holds() -> bool:
            texts.extend(v.get() for v in summaries)
            return not summaries or self._packs_into_one(template, texts)

        def fallback() -> RESPONSE_TEXT_TYPE:
            self.speculate = False
            return self.get_response(query_str, texts, **kwargs)

        yield from checked_stream(session, final.stream(), holds, fallback)

    async def _astream(
        self,
        session: Session,
        template: BasePromptTemplate,
        query_str: str,
        summaries: list[SemanticVariable],
        final: SemanticVariable,
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[str, None]:
        texts: list[str] = []

        async def holds() -> bool:
            texts.extend([await v.aget() for v in summaries])
            return not summaries or self._packs_into_one(template, texts)

        async def fallback() -> RESPONSE_TEXT_TYPE:
            self.speculate = False
            return await self.aget_response(query_str, texts, **kwargs)

        # aclosing: a consumer that stops early still closes the session now
        async with aclosing(achecked_stream(session, final.astream(), holds, fallback)) as tokens:
            async for token in tokens:
                yield token
