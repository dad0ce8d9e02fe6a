"""collection_paused(): the collector is off while any thread is inside, back on (if it was on)
once the last leaves, and left off if it was off."""

from __future__ import annotations

import gc
import threading

import pytest

from server.engine.collection_pause import collection_paused


def test_the_collector_is_off_until_the_last_thread_leaves() -> None:
    assert gc.isenabled()
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with collection_paused():
            inside.set()
            leave.wait(10)

    worker = threading.Thread(target=other)
    with collection_paused():
        assert not gc.isenabled()
        worker.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread is still inside
    leave.set()
    worker.join()
    assert gc.isenabled()


def test_an_error_inside_still_restores_and_a_disabled_collector_stays_off() -> None:
    with pytest.raises(ValueError), collection_paused():
        raise ValueError("a pattern that does not compile")
    assert gc.isenabled()
    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
