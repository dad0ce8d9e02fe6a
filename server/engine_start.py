"""How engine processes start: forked from a fork server that imported the engine (and torch)
once. An engine then starts, or restarts after a crash, in tens of milliseconds plus its
model's load rather than ~2.5 s of imports, and the server can start the fork server first
thing, so those imports run beside its own. Light on purpose: nothing here imports torch."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from multiprocessing.context import BaseContext
from typing import Any

# what the fork server imports before its first fork: what the child's entry point (`engine_main`)
# runs, and all below it
PRELOAD = ["server.engine_worker"]


def start_context() -> BaseContext:
    """The multiprocessing context engine processes start from: the fork server where there is
    one, else spawn. A fork of the server itself would copy its threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the fork server starts
    return context


def start_fork_server() -> None:
    """Start the fork server now (its imports run in a process of their own, beside whatever
    the caller imports meanwhile); a no-op where there is none or it runs already."""
    if start_context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def engine_main(*args: Any) -> None:
    """An engine process's main, `server.engine_worker.run_engine_worker(*args)`: named here, so
    that the server hands it to the child (by name, pickled) without importing the engine and
    torch itself. The fork server imported it already: a forked child finds it loaded."""
    from server.engine_worker import run_engine_worker

    run_engine_worker(*args)
