"""`max_concurrency` in a compiled chain: tasks (batch inputs, parallel branches, map items) run
at most k at once in a sliding window, as a plain batch's or RunnableParallel's thread pool runs
them: a task starts as soon as one of those running ends, not once a whole group has.

One graph cannot hold such a limit (the server starts every call whose inputs are ready, and a
graph carries no limit of its own), so each task that the window runs is a graph of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ContextThreadPoolExecutor

from parrot_bridge.langchain.rounds import Outcome


def window_size(config: RunnableConfig | None, count: int) -> int | None:
    """The `max_concurrency` that limits `count` tasks, or None where it does not (unset, or no
    fewer than `count`). A bad one is refused, as a plain thread pool refuses it."""
    limit = (config or {}).get("max_concurrency")
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"compile(): max_concurrency must be a positive int, got {limit!r}")
    return limit if count > limit else None


def run_window(
    tasks: Sequence[Callable[[], Any]], limit: int, *, stop_on_error: bool = False
) -> list[Outcome]:
    """Each task's outcome, in their order, at most `limit` of them running at once, each in a
    thread with a copy of this context (LangChain's config travels in context variables); they
    start in order. `stop_on_error`: once one fails, those not started yet are not (their
    outcome is a `CancelledError`; they come after every task that ran). A task's exception
    other than an `Exception` (Ctrl-C) is raised here, once those running have ended."""
    with ContextThreadPoolExecutor(max_workers=limit) as pool:
        futures = [pool.submit(task) for task in tasks]
        if stop_on_error:

            def cancel_rest(done: Future[Any]) -> None:
                if not done.cancelled() and done.exception() is not None:
                    for future in futures:
                        future.cancel()  # only those not started

            for future in futures:
                future.add_done_callback(cancel_rest)
    outcomes = []
    for future in futures:
        try:
            outcomes.append(Outcome(future.result()))
        except Exception as exc:  # a CancelledError too
            outcomes.append(Outcome(error=exc))
    return outcomes
