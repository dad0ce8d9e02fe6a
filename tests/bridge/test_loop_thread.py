"""The SDK's loop thread: a blocking call that is interrupted does not leave its work running."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from parrot_bridge.loop_thread import LoopThread


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
