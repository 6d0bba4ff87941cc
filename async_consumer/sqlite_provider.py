"""The embedded default provider: jobs from a :class:`SQLiteQueue` file.

At-least-once: a job is deleted only after its task ended, its handler returned and
its result line is on disk. Acknowledgements are batched: finished jobs collect in
a buffer that a flusher greenlet writes out every ``flush_interval`` seconds (results
first, then one delete transaction), which keeps the cost of a job low at high
throughput. A crash between the two steps repeats a result line; it never loses one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gevent
import gevent.event
import gevent.lock

from .backoff import Backoff
from .delivery import (
    Action,
    Decision,
    DeliveryCounts,
    admit,
    decide,
    given_up,
)
from .logs import as_log
from .promise import Promise
from .provider import Provider, Transformer
from .results import ResultsFile
from .sqlite_queue import QueuedJob, SQLiteQueue

DEFAULT_FLUSH_INTERVAL_SECONDS = 0.05
#: A buffer this large wakes the flusher at once instead of waiting for the interval.
FLUSH_BATCH_SIZE = 500


class _Settlement(NamedTuple):
    """A final decision waiting for the next flush (a tuple: one is made per job)."""

    job_id: int
    decision: Decision


class SQLiteProvider(Provider):
    """Delivers queued jobs as promises and records their outcomes.

    Args:
        queue: the queue file.
        transformer: turns a job's payload into a promise; a ``ValueError`` (the
            framework's ``JobError`` is one) dead-letters the job at once.
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
        self.counts = DeliveryCounts()
        self._buffer: list[_Settlement] = []
        self._flush_lock = gevent.lock.Semaphore()
        self._flush_soon = gevent.event.Event()
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
        refusal = given_up(job.key, job.attempt, job.max_attempts,
                           f" (last error: {job.last_error})")
        admitted = refusal or admit(self.transformer, job.payload, job.key, job.attempt)
        if isinstance(admitted, Decision):
            self._record(job, admitted)
            return None

        admitted.receipt = job
        return admitted

    # -- outcomes --------------------------------------------------------------------

    def settle(self, promise: Promise) -> None:
        job: QueuedJob = promise.receipt
        decision = decide(promise, job.key, job.attempt, job.max_attempts, self.backoff)
        self._record(job, decision)
        if len(self._buffer) >= FLUSH_BATCH_SIZE:
            # The flusher writes, not the task: a task never waits for the disk, and
            # a task cancelled at shutdown can never be inside a flush.
            self._flush_soon.set()

    def _record(self, job: QueuedJob, decision: Decision) -> None:
        self.counts.count(decision)
        if decision.action is Action.REQUEUE:
            self.queue.release(job.job_id)
        elif decision.action is Action.RETRY:
            self.queue.retry(job.job_id, decision.delay_seconds, decision.reason or "")
            self.log.debug("job {} attempt {}/{} failed; next attempt in {:.2f}s",
                           job.key, job.attempt, job.max_attempts, decision.delay_seconds)
        else:
            if decision.action is Action.DEAD_LETTER:
                self.log.error("job {} dead-lettered: {}", job.key, decision.reason)
            self._buffer.append(_Settlement(job.job_id, decision))

    # -- flushing --------------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.dead:
            self._flusher = gevent.spawn(self._flush_periodically)

    def _flush_periodically(self) -> None:
        while not self._closed:
            self._flush_soon.wait(self.flush_interval)
            self._flush_soon.clear()
            try:
                self.flush()
            except Exception:
                self.log.exception("could not record {} finished job(s); trying again",
                                   len(self._buffer))
                # Not at every wake-up: a failing disk is tried again once per interval.
                gevent.sleep(self.flush_interval)

    def flush(self) -> None:
        """Write the buffered results, then delete or dead-letter their jobs.

        If writing fails the buffer is kept, so the jobs stay leased and nothing is
        acknowledged without its result. One flush at a time: the results file waits
        for its fsync cooperatively.
        """
        if not self._buffer:
            return
        with self._flush_lock:
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        if not self._buffer:
            return

        pending, self._buffer = self._buffer, []
        try:
            if self.results is not None:
                self.results.write_many(s.decision.record for s in pending
                                        if s.decision.record is not None)
        except BaseException:
            self._buffer = pending + self._buffer
            raise

        self.queue.complete_many(s.job_id for s in pending
                                 if s.decision.action is Action.ACK)
        for settlement in pending:
            if settlement.decision.action is Action.DEAD_LETTER:
                self.queue.dead_letter(settlement.job_id, settlement.decision.reason or "")

    @property
    def unflushed(self) -> int:
        """Finished jobs whose results and acknowledgements wait for the next flush."""
        return len(self._buffer)

    def seconds_until_ready(self) -> float | None:
        return self.queue.seconds_until_next()

    def has_pending_work(self) -> bool:
        self.flush()
        return self.queue.has_pending()

    def close(self) -> None:
        """Flush what finished, stop the flusher and close the files."""
        if self._closed:
            return

        self._closed = True
        with self._flush_lock:
            # Holding the lock, the flusher is between flushes: killing it inside one
            # would leave result lines written for jobs it had not yet deleted.
            if self._flusher is not None:
                self._flusher.kill(block=True, timeout=1)
            self._flush_buffer()
        self.queue.close()
        if self.results is not None:
            self.results.close()

    def describe(self) -> str:
        return f"sqlite:{self.queue.path}"

    def queue_depth(self) -> int | None:
        """Jobs ready or waiting for a retry, for the metrics (leased ones excluded)."""
        counts = self.queue.counts()
        return counts["ready"] + counts["delayed"]
