"""When to restart an engine whose process died, and when to stop trying. Pure, no I/O.

An engine killed once (out of memory, a crash in a kernel) should come back by itself; one that
dies again and again (a bad model, a machine without memory) should not be respawned forever,
each try loading the weights again: after `max_restarts` within `window_s` it stays down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """`max_restarts` within `window_s` (0: never restart); the n-th restart in a window waits
    `backoff_s * 2 ** (n - 1)`, at most `max_backoff_s`."""

    max_restarts: int = 5
    window_s: float = 300.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be positive, got {self.window_s}")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 <= backoff_s <= max_backoff_s, got {self.backoff_s}, {self.max_backoff_s}"
            )


class RestartBudget:
    """One engine's restarts against its policy."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._restarts: deque[float] = deque()  # when each restart in the window began

    def next_delay(self) -> float | None:
        """Seconds to wait before restarting now (the restart is counted), or None when the
        budget is spent."""
        now = self._clock()
        while self._restarts and self._restarts[0] <= now - self.policy.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.policy.max_restarts:
            return None
        self._restarts.append(now)
        delay = self.policy.backoff_s * 2 ** (len(self._restarts) - 1)
        return min(delay, self.policy.max_backoff_s)
