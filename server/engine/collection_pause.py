"""Garbage collection held off while a large automaton is built.

Compiling a pattern near its size cap allocates ~100,000 lists and tuples, and the collector,
triggered by the allocations, walks the growing automaton again and again: with collection on,
a near-cap regular expression took 0.52-0.57 s to compile here, off 0.20-0.21 s (a process
without torch); with the server's startup objects frozen a grammar of 9,000 rules took 1.41 s
against 0.86 s (`python -m benchmarks.gc_pause`, medians, noisy). What a
compile allocates is kept (the automaton) or freed by reference counts, so nothing is lost by
collecting afterwards. The collector is process-wide: while any thread is inside
`collection_paused()` it is off, and back on (if it was) once the last one leaves.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_inside = 0
_was_enabled = False


@contextmanager
def collection_paused() -> Iterator[None]:
    global _inside, _was_enabled
    with _lock:
        if _inside == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _was_enabled:
                gc.enable()
