"""The server process's garbage-collection pauses: timed by generation from `start()` to
`stop()`, counted where /metrics reads them (no server here)."""

from __future__ import annotations

import gc
import threading

from server.gc_pauses import GcPauses


def test_collections_are_timed_by_generation_while_watched() -> None:
    pauses = GcPauses()
    pauses.start()
    try:
        gc.collect()  # a full one
        gc.collect(0)
        worker = threading.Thread(target=gc.collect)  # in another thread too
        worker.start()
        worker.join()
    finally:
        pauses.stop()
    histogram = pauses.histogram()
    assert histogram.count(generation="2") >= 2 and histogram.count(generation="0") >= 1
    assert 0 < histogram.sum(generation="2") < 5
    seen = histogram.count(generation="2")
    gc.collect()  # stopped: not counted
    assert pauses.histogram().count(generation="2") == seen
    lines = histogram.render()
    assert 'parrot_gc_pause_seconds_bucket{generation="2",le="0.0005"}' in "\n".join(lines)
    pauses.stop()  # twice: harmless
