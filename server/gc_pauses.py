"""The garbage collector's pauses in this process, for /metrics: while a collection runs, no
other thread of the process does (the event loop, an engine's step loop), so a long one is a
stall every stream and probe sees. Full collections took 0.1-0.65 s here before the server
froze its startup objects and packed its compiled automata (benchmarks/README, "Garbage-
collection pauses"); this keeps them in view."""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

from server.histogram import Histogram

GC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcPauses:
    """Times each collection from `start()` on, by generation (2: a full one). Collections run
    in whichever thread allocates, so they are queued and counted into `histogram()` where it
    is read (the event loop)."""

    def __init__(self) -> None:
        self._histogram = Histogram(
            "parrot_gc_pause_seconds",
            "Server process: garbage collections, by generation (2 is a full one); no other "
            "thread of the process runs meanwhile.",
            buckets=GC_BUCKETS_S,
            labels=("generation",),
        )
        self._done: deque[tuple[int, float]] = deque()  # appended from any thread
        self._began = 0.0  # collections do not overlap: one start, then its stop

    def start(self) -> None:
        gc.callbacks.append(self._on_collection)

    def stop(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def histogram(self) -> Histogram:
        """The pauses so far."""
        while self._done:
            generation, seconds = self._done.popleft()
            self._histogram.observe(seconds, generation=str(generation))
        return self._histogram

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self._done.append((info["generation"], time.perf_counter() - self._began))
