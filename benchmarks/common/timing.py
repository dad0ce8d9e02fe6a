"""Wall-clock timing of short calls on a shared machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    call: Callable[[], object], repeats: int, device: torch.device | str = "cpu"
) -> float:
    """Median milliseconds of the faster half of `repeats` calls, after two warm-up calls:
    other processes on a shared machine only ever add time, and with 2 cores one busy
    neighbour stalls a whole OpenMP region."""
    for _ in range(2):
        call()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times[: max(1, (len(times) + 1) // 2)]) * 1e3


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
