"""User functions met in a trace: telling placement from reading, and running async-only
lambdas from the (synchronous) trace."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from parrot_bridge.variable import SemanticVariable

T = TypeVar("T")

# Two texts that few transformations leave alone: whitespace runs and a newline, both cases,
# quotes, a backslash, digits, punctuation, non-ASCII letters; of different lengths, so that a
# result that depends on the text (its length, its words, its escaping) differs between them.
_PROBES = (
    "\n Ab {i} 'q\" \\ 09,é.;-\t",
    "  xY{i}\t\"Q' \\\\ 7!? ß Ü\r\n wOrd {i}",
)


def fragile_probes(variables: Sequence[SemanticVariable]) -> list[dict[str, str]]:
    """Two stand-ins for each variable's text (variable id -> probe), distinct per variable."""
    return [{v.id: probe.format(i=f"{i}{v.id[-4:]}") for i, v in enumerate(variables)}
            for probe in _PROBES]  # fmt: skip


def result_reads_text(
    func: Callable[[Any], Any], probe_inputs: Sequence[Any], expected: Sequence[Any]
) -> str | None:
    """Why `func` reads its input's text, or None: it must give `expected[k]` (its result on
    placeholders, with each probe put in) for every `probe_inputs[k]`. A function that changes
    only text that neither probe holds (replacing a word, say) still passes: the limit of this
    check."""
    for value, want in zip(probe_inputs, expected, strict=True):
        try:
            same = bool(func(value) == want)
        except Exception as exc:  # any failure on a probe means that it reads the text
            return f"it failed on a probe text ({type(exc).__name__}: {exc})"
        if not same:
            return "its result depends on the text"
    return None


def invoke_here(
    step: Runnable, value: Any, config: RunnableConfig | None, kwargs: dict[str, Any] | None = None
) -> Any:
    """`step.invoke`, except for a lambda made from an async function only: its sync invoke
    refuses, but the trace is synchronous (also under `ainvoke`), so its coroutine runs on an
    event loop of its own."""
    if isinstance(step, RunnableLambda) and not hasattr(step, "func"):
        return run_coroutine(step.ainvoke(value, config, **(kwargs or {})))
    return step.invoke(value, config, **(kwargs or {}))


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end from sync code, in a thread of its own when this one already runs
    an event loop (a sync call from async code)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    context = contextvars.copy_context()  # LangChain's config travels in context variables
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(context.run, asyncio.run, coro).result()
