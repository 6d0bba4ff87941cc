"""Counters and latency figures a consumer keeps while it runs."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .status import Status

#: How many task durations are kept for percentiles; memory stays flat on long runs.
LATENCY_SAMPLE_SIZE = 10_000


@dataclass
class LatencySample:
    """A fixed-size uniform sample of durations (reservoir sampling)."""

    capacity: int = LATENCY_SAMPLE_SIZE
    seen: int = 0
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
            return

        slot = random.randrange(self.seen)
        if slot < self.capacity:
            self.values[slot] = value

    def percentile(self, fraction: float) -> float | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index]


@dataclass
class ConsumerStats:
    """What a consumer did, by outcome."""

    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    by_outcome: dict[Status, int] = field(default_factory=dict)
    batches: int = 0
    latencies: LatencySample = field(default_factory=LatencySample)

    def record(self, promise_outcome: Status, elapsed_seconds: float) -> None:
        self.by_outcome[promise_outcome] = self.by_outcome.get(promise_outcome, 0) + 1
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
