"""The SDK's loop thread: a blocking call that is interrupted does not leave its work running."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import threading
import time

import pytest

from parrot_bridge.errors import ParrotError
from parrot_bridge.loop_thread import LoopThread, shared_loop


def test_ctrl_c_in_a_blocking_call_cancels_its_coroutine() -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def wait_forever() -> None:  # as a read from a server that stopped answering
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt() -> None:  # once the main thread is blocked in `run` (a second is ample)
        if started.wait(10):
            time.sleep(1)
            os.kill(os.getpid(), signal.SIGINT)

    loop = LoopThread()
    threading.Thread(target=interrupt, daemon=True).start()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(wait_forever())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cancelled.wait(10)
    loop.loop.call_soon_threadsafe(loop.loop.stop)


def _in_child() -> tuple[str, str]:
    """Run in a forked child: the shared loop, and the parent's own loop thread."""
    answer = shared_loop().run(asyncio.sleep(0, "answered"))
    try:
        _parents.run(asyncio.sleep(0))
        inherited = "ran"
    except ParrotError as exc:
        inherited = str(exc)
    return answer, inherited


_parents: LoopThread


def test_a_forked_child_gets_a_loop_of_its_own() -> None:
    """A process forked after the SDK ran (multiprocessing's default start on Linux) has no
    loop thread (fork copies only the calling thread): every call there waited for ever,
    whatever its timeout."""
    global _parents
    _parents = LoopThread()
    assert shared_loop().run(asyncio.sleep(0, "parent")) == "parent"  # the thread runs here
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        answer, inherited = pool.apply_async(_in_child).get(timeout=30)
    finally:
        pool.terminate()
    assert answer == "answered"
    assert re.fullmatch(r"the SDK's event loop .* process \d+ that made it, .* forked from it: .*",
                        inherited), inherited  # fmt: skip
    _parents.loop.call_soon_threadsafe(_parents.loop.stop)
