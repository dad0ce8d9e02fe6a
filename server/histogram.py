"""A Prometheus histogram: observations counted into fixed buckets, with their sum. Pure, no I/O."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

# seconds: from a decode step's time on a GPU to a long generation on a few CPU cores
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
    80.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """Observations by label values; `buckets` are the finite upper bounds, increasing."""

    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    labels: tuple[str, ...] = ()
    # per label values: how many observations fell in each bucket alone (the last: above all)
    _counts: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    _sums: dict[tuple[str, ...], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.buckets or any(b >= c for b, c in zip(self.buckets, self.buckets[1:], strict=False)):
            raise ValueError(f"{self.name}: buckets must be increasing, got {self.buckets}")
        if not all(math.isfinite(b) for b in self.buckets):
            raise ValueError(f"{self.name}: buckets must be finite (+Inf is implied)")

    def observe(self, value: float, **labels: str) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.name}: cannot observe NaN")
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
        # a bucket counts values <= its bound ("le")
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        return sum(self._counts.get(self._key(labels), ()))

    def sum(self, **labels: str) -> float:
        return self._sums.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        """Its lines of the text exposition: cumulative buckets, then the sum and the count."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self._counts.items()):
            pairs = [f'{n}="{escape_label_value(v)}"' for n, v in zip(self.labels, key, strict=True)]
            below = 0
            for bound, count in zip([*self.buckets, math.inf], counts, strict=True):
                below += count
                le = "+Inf" if bound == math.inf else _bound(bound)
                labels = ",".join([*pairs, f'le="{le}"'])
                lines.append(f"{self.name}_bucket{{{labels}}} {below}")
            suffix = f"{{{','.join(pairs)}}}" if pairs else ""
            lines.append(f"{self.name}_sum{suffix} {self._sums[key]!r}")
            lines.append(f"{self.name}_count{suffix} {below}")
        return lines

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labels)


def _bound(value: float) -> str:
    return str(int(value)) + ".0" if float(value).is_integer() else repr(value)


def escape_label_value(value: str) -> str:
    """As the text exposition format wants a label value inside its quotes."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
