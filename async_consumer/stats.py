"""Counters and latency figures a consumer keeps while it runs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from math import log2

from .status import Status

#: Durations are counted in buckets this many to a doubling: a percentile read from a
#: bucket's middle is within about 2% of the true value.
BUCKETS_PER_DOUBLING = 16
#: The shortest and longest durations told apart, as powers of two of a second (about
#: a microsecond and 36 hours); shorter and longer ones share the end buckets.
SHORTEST_EXPONENT = -20
LONGEST_EXPONENT = 17
_BUCKET_COUNT = (LONGEST_EXPONENT - SHORTEST_EXPONENT) * BUCKETS_PER_DOUBLING + 1
_LAST_BUCKET = _BUCKET_COUNT - 1
_SHORTEST_SECONDS = 2.0 ** SHORTEST_EXPONENT


class LatencyHistogram:
    """Task durations counted in log-spaced buckets, for percentiles.

    Adding a duration is a logarithm and an increment: no sorting, no random
    sampling, and memory that never grows however long the run. Percentiles are
    read from bucket middles, kept within the smallest and largest duration seen, so
    that a run whose tasks all took the same time reports exactly that time.
    """

    __slots__ = ("counts", "seen", "smallest", "largest")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKET_COUNT
        self.seen = 0
        self.smallest = math.inf
        self.largest = 0.0

    def add(self, value: float) -> None:
        self.seen += 1
        if value < self.smallest:
            self.smallest = value
        if value > self.largest:
            self.largest = value

        if value < _SHORTEST_SECONDS:
            index = 0
        else:
            index = int((log2(value) - SHORTEST_EXPONENT) * BUCKETS_PER_DOUBLING) + 1
            if index > _LAST_BUCKET:
                index = _LAST_BUCKET
        self.counts[index] += 1

    def percentile(self, fraction: float) -> float | None:
        """The duration below which ``fraction`` of the tasks ended (nearest rank)."""
        if not self.seen:
            return None

        rank = min(self.seen - 1, max(0, round(fraction * (self.seen - 1))))
        below = 0
        for index, count in enumerate(self.counts):
            below += count
            if below > rank:
                return min(max(_bucket_middle(index), self.smallest), self.largest)
        return self.largest


def _bucket_middle(index: int) -> float:
    if index == 0:
        return 0.0
    return 2.0 ** (SHORTEST_EXPONENT + (index - 0.5) / BUCKETS_PER_DOUBLING)


@dataclass
class ConsumerStats:
    """What a consumer did, by outcome."""

    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    by_outcome: dict[Status, int] = field(default_factory=dict)
    batches: int = 0
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, promise_outcome: Status, elapsed_seconds: float) -> None:
        """Count one ended task; called for every task, so it stays O(1)."""
        by_outcome = self.by_outcome
        by_outcome[promise_outcome] = by_outcome.get(promise_outcome, 0) + 1
        if not promise_outcome.wants_requeue:
            self.latencies.add(elapsed_seconds)

    def count(self, *outcomes: Status) -> int:
        return sum(self.by_outcome.get(outcome, 0) for outcome in outcomes)

    @property
    def finished(self) -> int:
        """Tasks that ended, whatever the outcome (cancelled ones excluded)."""
        return sum(n for status, n in self.by_outcome.items() if not status.wants_requeue)

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at

    def summary(self) -> dict[str, object]:
        """Plain figures for a log line or a JSON report."""
        elapsed = self.elapsed
        return {
            "finished": self.finished,
            "ok": self.count(Status.OK),
            "failed": self.count(Status.FAILED),
            "retried": self.count(Status.RETRY, Status.ERROR, Status.TIMEOUT),
            "timed_out": self.count(Status.TIMEOUT),
            "cancelled": self.count(Status.CANCELLED, Status.FATAL),
            "batches": self.batches,
            "seconds": round(elapsed, 3),
            "per_second": round(self.finished / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": _milliseconds(self.latencies.percentile(0.50)),
            "p95_ms": _milliseconds(self.latencies.percentile(0.95)),
        }


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
