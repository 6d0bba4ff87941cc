"""The embedded default provider: jobs from a :class:`SQLiteQueue` file.

At-least-once: a job is deleted only after its task ended, its handler returned and
its result line is on disk. Acknowledgements are batched: finished jobs collect in
a buffer that a flusher greenlet writes out every ``flush_interval`` seconds (results
first, then one delete transaction), which keeps the cost of a job low at high
throughput. A crash between the two steps repeats a result line; it never loses one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

from .backoff import Backoff
from .logs import as_log
from .promise import Promise
from .provider import Provider
from .results import ResultsFile
from .sqlite_queue import QueuedJob, SQLiteQueue
from .status import Status

DEFAULT_FLUSH_INTERVAL_SECONDS = 0.05
#: A buffer this large is flushed at once instead of waiting for the interval.
FLUSH_BATCH_SIZE = 500

Transformer = Callable[[QueuedJob], Promise]


@dataclass
class _Settlement:
    """A final outcome waiting for the next flush."""

    job_id: int
    record: dict[str, Any] | None
    dead_reason: str | None = None


@dataclass
class ProviderCounts:
    """Final outcomes seen by this provider, for the run summary."""

    ok: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class SQLiteProvider(Provider):
    """Delivers queued jobs as promises and records their outcomes.

    Args:
        queue: the queue file.
        transformer: turns a queued job into a promise; a ``ValueError`` (or the
            framework's ``JobError``) from it dead-letters the job at once.
        results: where final outcomes are written, one line each (optional).
        backoff: the retry schedule.
        logger: a loguru or standard logger.
        flush_interval: seconds between two flushes of finished jobs.
    """

    def __init__(
        self,
        queue: SQLiteQueue,
        transformer: Transformer,
        *,
        results: ResultsFile | None = None,
        backoff: Backoff | None = None,
        logger: Any = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.queue = queue
        self.transformer = transformer
        self.results = results
        self.backoff = backoff or Backoff()
        self.log = as_log(logger)
        self.flush_interval = flush_interval
        self.counts = ProviderCounts()
        self._buffer: list[_Settlement] = []
        self._flusher: gevent.Greenlet | None = None
        self._closed = False

    # -- delivering ------------------------------------------------------------------

    def get(self) -> Promise | None:
        batch = self.get_batch(1)
        return batch[0] if batch else None

    def get_batch(self, max_count: int) -> list[Promise]:
        self._ensure_flusher()
        promises = []
        for job in self.queue.claim(max_count):
            promise = self._to_promise(job)
            if promise is not None:
                promises.append(promise)
        return promises

    def _to_promise(self, job: QueuedJob) -> Promise | None:
        if job.attempt > job.max_attempts:
            reason = (f"gave up: no outcome after {job.max_attempts} attempt(s); the "
                      f"worker stopped or hung during each (last error: {job.last_error})")
            self.log.error("job {}: {}", job.key, reason)
            self._bury(job, reason)
            return None

        try:
            promise = self.transformer(job)
        except ValueError as error:
            reason = f"cannot be run: {error}"
            self.log.error("job {} (row {}) {}; dead-lettered", job.key, job.job_id, reason)
            self._bury(job, reason)
            return None

        promise.receipt = job
        promise.attempt = job.attempt
        return promise

    def _bury(self, job: QueuedJob, reason: str) -> None:
        record = _record(job.key, "failed", job.attempt - 1, reason)
        self._buffer.append(_Settlement(job.job_id, record, dead_reason=reason))
        self.counts.failed += 1
        self.counts.dead_lettered += 1

    # -- outcomes --------------------------------------------------------------------

    def settle(self, promise: Promise) -> None:
        job: QueuedJob = promise.receipt
        outcome = promise.outcome
        self.counts.by_status[outcome.value] = self.counts.by_status.get(outcome.value, 0) + 1

        if outcome.wants_requeue:
            self.queue.release(job.job_id)
            self.counts.requeued += 1
        elif outcome.wants_retry:
            self._retry_or_bury(promise, job)
        else:
            self._finish(promise, job, "ok" if outcome is Status.OK else "failed")

        if len(self._buffer) >= FLUSH_BATCH_SIZE:
            self.flush()

    def _retry_or_bury(self, promise: Promise, job: QueuedJob) -> None:
        error = str(promise.error or promise.outcome.value)
        if job.attempt >= job.max_attempts:
            reason = f"gave up after {job.attempt} attempt(s): {error}"
            record = _record(job.key, "failed", job.attempt, reason, promise)
            self._buffer.append(_Settlement(job.job_id, record, dead_reason=reason))
            self.counts.failed += 1
            self.counts.dead_lettered += 1
            self.log.error("job {} dead-lettered: {}", job.key, reason)
            return

        delay = self.backoff.delay(job.attempt, promise.retry_delay)
        self.queue.retry(job.job_id, delay, error)
        self.counts.retried += 1
        self.log.debug("job {} attempt {}/{} failed; next attempt in {:.2f}s",
                       job.key, job.attempt, job.max_attempts, delay)

    def _finish(self, promise: Promise, job: QueuedJob, status: str) -> None:
        error = None if status == "ok" else str(promise.error) if promise.error else None
        record = _record(job.key, status, job.attempt, error, promise)
        self._buffer.append(_Settlement(job.job_id, record))
        if status == "ok":
            self.counts.ok += 1
        else:
            self.counts.failed += 1

    # -- flushing --------------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.dead:
            self._flusher = gevent.spawn(self._flush_periodically)

    def _flush_periodically(self) -> None:
        while not self._closed:
            gevent.sleep(self.flush_interval)
            try:
                self.flush()
            except Exception:
                self.log.exception("could not record {} finished job(s); trying again",
                                   len(self._buffer))

    def flush(self) -> None:
        """Write the buffered results, then delete or dead-letter their jobs.

        If writing fails the buffer is kept, so the jobs stay leased and nothing is
        acknowledged without its result.
        """
        if not self._buffer:
            return

        pending, self._buffer = self._buffer, []
        try:
            if self.results is not None:
                self.results.write_many(s.record for s in pending if s.record is not None)
        except BaseException:
            self._buffer = pending + self._buffer
            raise

        self.queue.complete_many(s.job_id for s in pending if s.dead_reason is None)
        for settlement in pending:
            if settlement.dead_reason is not None:
                self.queue.dead_letter(settlement.job_id, settlement.dead_reason)

    def has_pending_work(self) -> bool:
        self.flush()
        return self.queue.has_pending()

    def close(self) -> None:
        """Flush what finished, stop the flusher and close the files."""
        if self._closed:
            return

        self._closed = True
        if self._flusher is not None:
            self._flusher.kill(block=True, timeout=1)
        self.flush()
        self.queue.close()
        if self.results is not None:
            self.results.close()

    def describe(self) -> str:
        return f"sqlite:{self.queue.path}"


def _record(
    key: str, status: str, attempts: int, error: str | None, promise: Promise | None = None
) -> dict[str, Any]:
    record: dict[str, Any] = {"id": key, "status": status, "status_code": None}
    if promise is not None:
        record.update(promise.result_fields())
    record.update({
        "attempts": attempts,
        "elapsed_ms": round(promise.elapsed * 1000, 1) if promise is not None else None,
        "error": error,
        "finished_at": round(time.time(), 3),
    })
    return record
