"""The steps of LlamaIndex's refine loop, simulated without an LLM (pure).

The stock loop repacks each chunk against the refine prompt filled with the current answer, and
keeps the previous answer when a step answers nothing. Simulated once with unknown answers (a
plan to submit at once) and again with the answers the server gave, the two step lists are
equal exactly when the submitted chain made the calls the stock loop would have made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["RefineStep", "simulate_refine"]

# repack(chunk, existing_answer or None for the first step's template) -> packed chunks
Repack = Callable[[str, str | None], list[str]]


@dataclass(frozen=True, slots=True)
class RefineStep:
    """One LLM call: `qa` answers from a chunk; `refine` improves the answer of step `reads`
    (-1: the answer the loop started with)."""

    kind: Literal["qa", "refine"]
    chunk: str
    reads: int | None


def simulate_refine(
    chunks: Sequence[str],
    repack: Repack,
    start: str | None,
    answers: Sequence[str] | None = None,
    keep_empty: bool = False,
) -> tuple[list[RefineStep], str | None]:
    """The steps and the final answer (None when unknown or none).

    `chunks` are already packed for the biggest prompt; `answers[i]` is step i's output when
    known (unknown answers are planned as non-empty ones that fit as well as an empty text).
    An empty answer keeps the previous one, unless `keep_empty` (the stock streaming loop
    replaces the answer with whatever a step streamed).
    """
    queue = deque(chunks)
    steps: list[RefineStep] = []
    answer, source = start, (-1 if start is not None else None)
    while queue:
        chunk = queue.popleft()
        if answer is None:
            steps.append(RefineStep("qa", chunk, None))
        else:
            packed = repack(chunk, answer)
            if len(packed) > 1:
                queue.extendleft(packed)
                continue
            steps.append(RefineStep("refine", packed[0], source))
        i = len(steps) - 1
        given = answers[i] if answers is not None and i < len(answers) else None
        if given is None:
            answer, source = "", i  # planned: the step's output, whatever it is
        elif given or keep_empty:
            answer, source = given, i
    final = answer if answers is not None and len(answers) >= len(steps) else None
    return steps, final
