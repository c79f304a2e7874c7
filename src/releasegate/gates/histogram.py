"""A mergeable response-time histogram with 0.1% relative precision.

Used on both sides of the Locust subprocess boundary: the plugin that runs inside
Locust records every post-warm-up response time into one :class:`Histogram` per
request name, workers ship them to the master, and releasegate reads the merged result.
Standard library only, so the plugin can import it without loading anything else.

Buckets are logarithmic: bucket ``k`` holds values in ``[BASE * GAMMA**k, BASE *
GAMMA**(k+1))`` and is reported as its geometric middle, so a reported percentile is
within ``sqrt(GAMMA) - 1`` (0.1%) of a recorded value. The minimum and maximum are kept
exactly. Percentiles use the nearest-rank definition: the smallest recorded value that
at least ``q`` percent of the samples do not exceed.
"""

from __future__ import annotations

import math
from typing import Any

GAMMA = 1.002
BASE_MS = 0.001  # values below one microsecond share bucket -1 and are reported as 0
_LOG_GAMMA = math.log(GAMMA)


def bucket_of(ms: float) -> int:
    """The bucket index of a response time in milliseconds."""
    if ms < BASE_MS:
        return -1
    return math.floor(math.log(ms / BASE_MS) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The value a bucket stands for (its geometric middle)."""
    if index < 0:
        return 0.0
    return float(BASE_MS * GAMMA ** (index + 0.5))


class Histogram:
    """Counts of response times (ms) in logarithmic buckets, plus exact count/sum/min/max."""

    __slots__ = ("buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, ms: float, times: int = 1) -> None:
        """Record a response time in milliseconds."""
        ms = max(0.0, float(ms))
        index = bucket_of(ms)
        self.buckets[index] = self.buckets.get(index, 0) + times
        self.count += times
        self.total += ms * times
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)

    def merge(self, other: Histogram) -> None:
        """Add another histogram's samples to this one."""
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The nearest-rank ``q``-th percentile (0 < q <= 100), or None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count - 1e-9))
        if rank >= self.count:
            return self.max
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(max(bucket_value(index), self.min), self.max)
        return self.max  # pragma: no cover - counts always add up

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return {
            "count": self.count,
            "total": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": sorted(self.buckets.items()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        hist = cls()
        hist.buckets = {int(index): int(count) for index, count in data.get("buckets", [])}
        hist.count = int(data.get("count", 0))
        hist.total = float(data.get("total", 0.0))
        if hist.count:
            hist.min = float(data["min"])
            hist.max = float(data["max"])
        return hist
