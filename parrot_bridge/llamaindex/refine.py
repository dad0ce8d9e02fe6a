"""Refine as one chain submitted at once: each step reads the previous step's output variable,
so it starts on the server the moment that answer is complete, without a client round trip.

The chain is planned with the stock loop's packing (`simulate_refine`); once the answers are
known the loop is simulated again with them, and if it would have made other calls (an empty
answer, an answer too long for the next chunk), the query is answered the stock way instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import aclosing
from typing import Any

from llama_index.core.prompts.prompt_utils import get_biggest_prompt
from llama_index.core.response_synthesizers import Refine
from llama_index.core.types import RESPONSE_TEXT_TYPE

from parrot_bridge.llamaindex.checked_stream import achecked_stream, checked_stream
from parrot_bridge.llamaindex.llm import Parrot
from parrot_bridge.llamaindex.marked_prompt import UnmarkablePromptError
from parrot_bridge.llamaindex.refine_plan import RefineStep, simulate_refine
from parrot_bridge.session import Session
from parrot_bridge.variable import SemanticVariable

__all__ = ["ParrotRefine"]

_EMPTY = "Empty Response"  # what the stock loop answers when no step answered


class ParrotRefine(Refine):
    """`Refine` whose chain runs on a `Parrot` server as one graph.

    Falls back to the stock loop for other LLMs, structured outputs or answer filtering, and a
    streamed previous response.
    """

    def get_response(
        self,
        query_str: str,
        text_chunks: Sequence[str],
        prev_response: RESPONSE_TEXT_TYPE | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TEXT_TYPE:
        chain = self._plan(query_str, text_chunks, prev_response)
        if chain is None:
            return super().get_response(query_str, text_chunks, prev_response, **response_kwargs)
        steps, chunks = chain
        session = self._parrot.session(name="refine")
        try:
            outputs = self._record(session, query_str, steps, prev_response, response_kwargs)
        except UnmarkablePromptError:
            session.close()
            return super().get_response(query_str, text_chunks, prev_response, **response_kwargs)
        if self._streaming:
            return self._stream(session, steps, chunks, outputs, query_str, prev_response,
                                text_chunks, response_kwargs)  # fmt: skip
        try:
            outputs[-1].get()
            answers = [v.get() for v in outputs]
        finally:
            session.close()
        final = self._check(query_str, steps, chunks, prev_response, answers)
        if final is False:
            return super().get_response(query_str, text_chunks, prev_response, **response_kwargs)
        return final or _EMPTY

    async def aget_response(
        self,
        query_str: str,
        text_chunks: Sequence[str],
        prev_response: RESPONSE_TEXT_TYPE | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TEXT_TYPE:
        chain = self._plan(query_str, text_chunks, prev_response)
        if chain is None:
            return await super().aget_response(
                query_str, text_chunks, prev_response, **response_kwargs
            )
        steps, chunks = chain
        session = self._parrot.session(name="refine")
        try:
            outputs = self._record(session, query_str, steps, prev_response, response_kwargs)
        except UnmarkablePromptError:
            await session.aclose()
            return await super().aget_response(
                query_str, text_chunks, prev_response, **response_kwargs
            )
        if self._streaming:
            return self._astream(session, steps, chunks, outputs, query_str, prev_response,
                                 text_chunks, response_kwargs)  # fmt: skip
        try:
            await outputs[-1].aget()
            answers = [await v.aget() for v in outputs]
        finally:
            await session.aclose()
        final = self._check(query_str, steps, chunks, prev_response, answers)
        if final is False:
            return await super().aget_response(
                query_str, text_chunks, prev_response, **response_kwargs
            )
        return final or _EMPTY

    # -- planning ----------------------------------------------------------------------------

    @property
    def _parrot(self) -> Parrot:
        assert isinstance(self._llm, Parrot)
        return self._llm

    def _plan(
        self, query_str: str, text_chunks: Sequence[str], prev: Any
    ) -> tuple[list[RefineStep], list[str]] | None:
        """The planned steps and the chunks packed for the biggest prompt; None: stock loop."""
        if not (
            isinstance(self._llm, Parrot)
            and self._llm.output_parser is None
            and self._output_cls is None
            and not self._structured_answer_filtering
            and not self._multimodal
            and (prev is None or isinstance(prev, str))
        ):
            return None
        biggest = get_biggest_prompt([self._text_qa_template, self._refine_template])
        chunks = [
            packed
            for chunk in text_chunks
            for packed in self._prompt_helper.repack(
                biggest, [chunk], llm=self._llm, padding=self._response_padding_size
            )
        ]
        steps, _ = simulate_refine(chunks, self._repacker(query_str), prev)
        return (steps, chunks) if steps else None

    def _repacker(self, query_str: str) -> Any:
        def repack(chunk: str, answer: str | None) -> list[str]:
            template = self._refine_template.partial_format(
                query_str=query_str, existing_answer=answer
            )
            return self._prompt_helper.repack(template, [chunk], llm=self._llm)

        return repack

    def _record(
        self,
        session: Session,
        query_str: str,
        steps: list[RefineStep],
        prev: str | None,
        kwargs: dict[str, Any],
    ) -> list[SemanticVariable]:
        llm = self._parrot
        qa = self._text_qa_template.partial_format(query_str=query_str)
        refine = self._refine_template.partial_format(query_str=query_str)
        outputs: list[SemanticVariable] = []
        for step in steps:
            if step.kind == "qa":
                var = llm.call(session, qa, context_str=step.chunk, **kwargs)
            else:
                reads = prev if step.reads == -1 else outputs[step.reads]  # type: ignore[index]
                var = llm.call(
                    session, refine, existing_answer=reads, context_msg=step.chunk, **kwargs
                )
            outputs.append(var)
        return outputs

    def _check(
        self,
        query_str: str,
        steps: list[RefineStep],
        chunks: list[str],
        prev: str | None,
        answers: list[str],
    ) -> str | None | bool:
        """The stock loop's final answer if it makes the planned calls given these answers;
        False if it would not."""
        actual, final = simulate_refine(
            chunks, self._repacker(query_str), prev, answers, keep_empty=self._streaming
        )
        return final if actual == steps else False

    # -- streaming: check the chain up to the last step, then stream the last step ----------

    def _stream(
        self,
        session: Session,
        steps: list[RefineStep],
        chunks: list[str],
        outputs: list[SemanticVariable],
        query_str: str,
        prev: str | None,
        text_chunks: Sequence[str],
        kwargs: dict[str, Any],
    ) -> Generator[str, None, None]:
        def holds() -> bool:
            answers = [v.get() for v in outputs[:-1]] + ["x"]
            return self._check(query_str, steps, chunks, prev, answers) is not False

        def fallback() -> RESPONSE_TEXT_TYPE:
            return Refine.get_response(self, query_str, text_chunks, prev, **kwargs)

        yield from checked_stream(session, outputs[-1].stream(), holds, fallback)

    async def _astream(
        self,
        session: Session,
        steps: list[RefineStep],
        chunks: list[str],
        outputs: list[SemanticVariable],
        query_str: str,
        prev: str | None,
        text_chunks: Sequence[str],
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[str, None]:
        async def holds() -> bool:
            answers = [await v.aget() for v in outputs[:-1]] + ["x"]
            return self._check(query_str, steps, chunks, prev, answers) is not False

        async def fallback() -> RESPONSE_TEXT_TYPE:
            return await Refine.aget_response(self, query_str, text_chunks, prev, **kwargs)

        # aclosing: a consumer that stops early still closes the session now
        async with aclosing(
            achecked_stream(session, outputs[-1].astream(), holds, fallback)
        ) as tokens:
            async for token in tokens:
                yield token
