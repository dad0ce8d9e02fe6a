"""A session whose LlamaIndex calls reach the LLM's callbacks and instrumentation.

A synthesizer's calls run on the server as one graph and a call's prompt may hold earlier
calls' answers, so its full prompt is known on the client only once those answers are read.
Each call is therefore reported (with the events `LLM.predict` dispatches) when the session
closes, in the order the calls were recorded; a call whose answer or inputs were never read
(a stream stopped early, a failed submission) is not reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.prompts import BasePromptTemplate

from parrot_bridge.llamaindex.llm_events import predicted
from parrot_bridge.llamaindex.marked_prompt import Joined
from parrot_bridge.session import Session
from parrot_bridge.variable import SemanticVariable

if TYPE_CHECKING:
    from parrot_bridge.llamaindex.llm import Parrot

__all__ = ["ReportedSession"]


@dataclass(frozen=True, slots=True)
class _Recorded:
    prompt: BasePromptTemplate
    args: dict[str, Any]
    output: SemanticVariable


class ReportedSession(Session):
    """A `Session` that reports its recorded LlamaIndex calls to `llm`'s callbacks on close."""

    def __init__(self, llm: Parrot, name: str | None = None) -> None:
        super().__init__(llm.base_url, name=name, timeout=llm.timeout,
                         max_retries=llm.max_retries, api_key=llm.api_key)  # fmt: skip
        self._llm = llm
        self._recorded: list[_Recorded] = []
        self._recorded_lock = threading.Lock()

    def record(
        self, prompt: BasePromptTemplate, args: dict[str, Any], output: SemanticVariable
    ) -> None:
        """Report the call of `prompt` on `args` (which wrote `output`) when the session closes."""
        with self._recorded_lock:
            self._recorded.append(_Recorded(prompt, dict(args), output))

    def close(self) -> None:
        try:
            self._report()
        finally:
            super().close()

    async def aclose(self) -> None:
        try:
            self._report()
        finally:
            await super().aclose()

    def _report(self) -> None:
        with self._recorded_lock:
            recorded, self._recorded = self._recorded, []
        for call in recorded:
            answer = call.output.value
            args = _known_values(call.args)
            if answer is not None and args is not None:
                predicted(self._llm, call.prompt, args, lambda answer=answer: answer, call.output)


def _known_values(args: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments with variables replaced by their values (as the server fills the prompt);
    None when one is not known on the client."""
    known: dict[str, Any] = {}
    for name, value in args.items():
        parts = value.parts if isinstance(value, Joined) else [value]
        if any(isinstance(p, SemanticVariable) and p.value is None for p in parts):
            return None
        if isinstance(value, Joined):
            texts = [_text(p) for p in value.parts]
            known[name] = value.separator.join(t.strip() if value.strip else t for t in texts)
        else:
            known[name] = _text(value) if isinstance(value, SemanticVariable) else value
    return known


def _text(value: str | SemanticVariable) -> str:
    return value if isinstance(value, str) else value.value or ""
