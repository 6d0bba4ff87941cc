"""The scheduler: takes promises from a provider and keeps them running.

The consumer runs in the greenlet that calls :meth:`AsyncConsumer.consume` (usually
the main one) and never starts more work than it has room for: tasks run in a
:class:`WorkerPool` of at most ``concurrency`` worker greenlets, and the provider is
asked only for as many promises as there are free slots.
"""

from __future__ import annotations

import enum
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent

from .errors import FatalTaskError, RetryLater, TaskTimeout
from .logs import as_log
from .promise import Promise
from .provider import Provider
from .stats import ConsumerStats
from .status import Status
from .workers import Deadline, TaskGreenlet, WorkerPool, current_concurrency

__all__ = ["AsyncConsumer", "ConsumerObserver", "Mode", "TaskGreenlet", "current_concurrency"]

DEFAULT_TASK_TIMEOUT_SECONDS = 60.0
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 30.0
DEFAULT_IDLE_POLL_MAX_SECONDS = 1.0
DEFAULT_STATS_INTERVAL_SECONDS = 10.0

#: First pause when the provider has nothing; it doubles up to ``idle_poll_max``.
IDLE_POLL_MIN_SECONDS = 0.005
#: How long ``on_exception`` may take after a task timed out.
TIMEOUT_HANDLER_GRACE_SECONDS = 5.0
#: How long cancelled tasks get to unwind at shutdown before they are abandoned.
CANCEL_GRACE_SECONDS = 2.0
#: How often a consumer whose pool is full looks at its stop flag.
SLOT_WAIT_SECONDS = 0.25
#: Threads the hub's pool keeps beyond one per task slot, and the most it gets.
RESOLVER_SPARE_THREADS = 4
RESOLVER_MAX_THREADS = 1024
#: Below this many free file descriptors per task slot, startup warns.
FILES_PER_TASK = 2
#: Observers are ticked at most this often, from the loop (never per task).
TICK_SECONDS = 0.1
#: With observers, the longest the loop sleeps while idle, so that ticks stay regular.
OBSERVED_IDLE_PAUSE_SECONDS = 0.25

# Read for every task: a module global costs a twentieth of ``Status.OK`` on the class.
_OK = Status.OK
_PENDING = Status.PENDING


class Mode(str, enum.Enum):
    """How new work is started.

    ``sliding`` keeps ``concurrency`` tasks in flight: a slot that frees is refilled
    at once. ``batch`` is the original library's behaviour: collect a batch, run it,
    wait for its slowest task, then collect the next.
    """

    SLIDING = "sliding"
    BATCH = "batch"


class _IdleBackoff:
    """The pause before asking an empty provider again: doubles up to a cap."""

    def __init__(self, maximum_seconds: float) -> None:
        self.maximum = maximum_seconds
        self.current = IDLE_POLL_MIN_SECONDS

    def next(self) -> float:
        pause = self.current
        self.current = min(self.current * 2, self.maximum)
        return pause

    def reset(self) -> None:
        self.current = IDLE_POLL_MIN_SECONDS


class ConsumerObserver:
    """Hears about a consumer's life: start, regular ticks, stop; no-ops by default.

    The loop calls :meth:`on_tick` at most every ``TICK_SECONDS`` and never per task,
    so that watching a consumer (systemd's watchdog, health checks) costs nothing on
    the task path. A tick that stops coming means the loop itself is stuck.
    """

    def on_start(self, consumer: AsyncConsumer) -> None:
        """The provider is built and the loop is about to take work."""

    def on_tick(self, consumer: AsyncConsumer, now: float) -> None:
        """The loop is alive; ``now`` is ``time.monotonic()``."""

    def on_stopping(self, consumer: AsyncConsumer, reason: str) -> None:
        """Shutdown has begun: no new work is taken."""

    def on_stopped(self, consumer: AsyncConsumer) -> None:
        """The provider is closed and the run is over."""


class AsyncConsumer:
    """Runs promises from ``provider``, at most ``concurrency`` at a time.

    Args:
        provider: where promises come from and where outcomes are reported.
        concurrency: how many tasks run at once.
        max_batch_collect_time: seconds to wait for more promises once at least one
            is waiting; a batch is also full at ``concurrency`` promises.
        logger: a loguru logger, a ``logging.Logger``, or ``None`` for loguru's.
        task_timeout: seconds a task may run before it is interrupted (``None``: no
            limit; not recommended).
        shutdown_timeout: seconds in-flight tasks get to finish once stopping.
        mode: ``"sliding"`` (default) or ``"batch"``; see :class:`Mode`.
        idle_poll_max: the longest pause between two looks at an empty provider.
        stats_interval: seconds between two progress lines in sliding mode.
        handle_signals: stop gracefully on SIGTERM/SIGINT (main thread only).
    """

    greenlet_class = TaskGreenlet

    def __init__(
        self,
        provider: Provider,
        concurrency: int,
        max_batch_collect_time: float,
        logger: Any = None,
        *,
        task_timeout: float | None = DEFAULT_TASK_TIMEOUT_SECONDS,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
        mode: str | Mode = Mode.SLIDING,
        idle_poll_max: float = DEFAULT_IDLE_POLL_MAX_SECONDS,
        stats_interval: float = DEFAULT_STATS_INTERVAL_SECONDS,
        handle_signals: bool = True,
    ) -> None:
        _check_arguments(concurrency, max_batch_collect_time, task_timeout, shutdown_timeout)
        self.provider = provider
        self.concurrency = concurrency
        self.max_batch_collect_time = float(max_batch_collect_time)
        self.task_timeout = task_timeout
        self.shutdown_timeout = shutdown_timeout
        self.mode = _parse_mode(mode)
        self.idle_poll_max = idle_poll_max
        self.stats_interval = stats_interval
        self.handle_signals = handle_signals
        self.log = as_log(logger)
        self.pool = self._new_pool()
        self.stats = ConsumerStats()
        self._debug = True
        self._stopping = False
        self._stop_reason = ""
        self._signals_seen = 0
        self._fatal: FatalTaskError | None = None
        self._next_progress_at = 0.0
        #: Told about start, ticks and stop; see :class:`ConsumerObserver`.
        self.observers: list[Any] = []
        #: Called with every settled promise, after the provider; ``None``: nothing to
        #: call, which is what keeps a run without metrics at its usual cost per task.
        self.on_settled: Callable[[Promise], None] | None = None
        #: ``time.monotonic()`` of the loop's latest tick; 0 before the first.
        self.last_tick = 0.0
        #: ``time.monotonic()`` of the latest failure to fetch work; 0 if none.
        self.last_fetch_error = 0.0
        self._next_tick_at = 0.0

    # -- public API -------------------------------------------------------------------

    def consume(self, until_empty: bool = False) -> ConsumerStats:
        """Run until :meth:`stop`, a signal, a fatal task error or (optionally) an empty queue.

        Returns the run's statistics. Re-raises a :class:`FatalTaskError` after the
        clean shutdown it caused.
        """
        self.stats = ConsumerStats()
        self.pool = self._new_pool()
        self._debug = self.log.is_enabled("DEBUG")
        # Signals first: once the start is announced (READY=1 for systemd), a SIGTERM
        # must find the graceful handler.
        watchers = self._install_signal_handlers()
        try:
            self._announce()
            self._loop(until_empty)
        finally:
            self._shutdown()
            for watcher in watchers:
                watcher.cancel()

        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def stop(self, reason: str = "stop() was called") -> None:
        """Stop taking work; in-flight tasks get ``shutdown_timeout`` to finish.

        Safe to call from a task, a signal handler or another greenlet: it only sets
        a flag that the loop acts on.
        """
        if self._stopping:
            return

        self._stopping = True
        self._stop_reason = reason
        self.log.info(
            "stopping ({}): taking no new work, {} task(s) in flight",
            reason, len(self.pool),
        )
        self._tell("on_stopping", reason)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def set_concurrency(self, concurrency: int) -> None:
        """Change how many tasks may run at once, while running.

        Growing takes effect at the next free slot; shrinking lets the tasks in flight
        finish and starts new ones only once fewer than ``concurrency`` run. Workers
        beyond the new size end after their idle time.
        """
        _check_arguments(concurrency, self.max_batch_collect_time, self.task_timeout,
                         self.shutdown_timeout)
        self.concurrency = concurrency
        self.pool.size = concurrency
        self._size_resolver_pool()

    def set_stats_interval(self, seconds: float) -> None:
        """Change how often the progress line is logged, from the next line on."""
        self.stats_interval = seconds
        self._next_progress_at = time.monotonic() + seconds

    def refresh_log_level(self) -> None:
        """Re-read whether DEBUG lines are wanted, after the log sinks changed."""
        self._debug = self.log.is_enabled("DEBUG")

    @property
    def in_flight(self) -> int:
        return len(self.pool)

    # -- the loop ---------------------------------------------------------------------

    def _loop(self, until_empty: bool) -> None:
        idle = _IdleBackoff(self.idle_poll_max)
        while not self._stopping:
            self._tick_if_due()
            if not self._wait_for_free_slot():
                continue

            batch = self._collect_batch(idle)
            if batch:
                self._dispatch(batch)
                continue

            if until_empty and self._drained():
                self.log.info("the provider is empty and no task is in flight: finishing")
                return
            self._pause_while_idle(self._idle_pause(idle))

    def _new_pool(self) -> WorkerPool:
        """A pool per run, so that a task left over from a previous run counts in none."""
        return WorkerPool(self.concurrency, self._run_task, self._cancel_unstarted,
                          task_timeout=self.task_timeout, greenlet_class=self.greenlet_class)

    def _wait_for_free_slot(self) -> bool:
        if self.pool.free_count() > 0:
            return True
        return self.pool.wait_available(timeout=SLOT_WAIT_SECONDS)

    def _collect_batch(self, idle: _IdleBackoff) -> list[Promise]:
        """Collect promises until the batch is full or the collect time has passed.

        Returns an empty list at once when the provider has nothing and nothing was
        collected yet, so that the caller can idle or finish.
        """
        wanted = self.pool.free_count() if self.mode is Mode.SLIDING else self.concurrency
        batch: list[Promise] = []
        started = time.monotonic()
        while len(batch) < wanted and not self._stopping:
            fetched = self._fetch(wanted - len(batch))
            if fetched:
                batch.extend(fetched)
                idle.reset()
                continue

            remaining = self.max_batch_collect_time - (time.monotonic() - started)
            if not batch or remaining <= 0:
                break
            gevent.sleep(min(idle.next(), remaining))
        return batch

    def _fetch(self, count: int) -> list[Promise]:
        """Ask the provider for promises; a provider error is logged, never fatal."""
        try:
            return self.provider.get_batch(count)
        except Exception:
            self.last_fetch_error = time.monotonic()
            self.log.exception(
                "provider {} failed to deliver work; trying again shortly",
                self.provider.describe(),
            )
            return []

    def _dispatch(self, batch: list[Promise]) -> None:
        if self.mode is Mode.SLIDING:
            self.pool.submit(batch)
            self.stats.batches += 1
            if self._debug:
                self.log.debug("started {} task(s); {} in flight", len(batch), len(self.pool))
            return

        started = time.monotonic()
        finished_before = self.stats.finished
        self.pool.submit(batch)
        self.stats.batches += 1
        while not self.pool.join(timeout=SLOT_WAIT_SECONDS) and not self._stopping:
            self._tick_if_due()
        self.log.info(
            "batch of {} finished in {:.3f}s ({} ended)",
            len(batch), time.monotonic() - started, self.stats.finished - finished_before,
        )

    def _drained(self) -> bool:
        if len(self.pool):
            return False
        try:
            return not self.provider.has_pending_work()
        except Exception:
            self.log.exception("provider {} could not tell whether work is pending",
                               self.provider.describe())
            return False

    def _idle_pause(self, idle: _IdleBackoff) -> float:
        """The backoff pause, cut short when the provider knows work is due sooner."""
        pause = idle.next()
        if self.observers:
            pause = min(pause, OBSERVED_IDLE_PAUSE_SECONDS)
        try:
            due = self.provider.seconds_until_ready()
        except Exception:
            return pause
        if due is None:
            return pause
        return min(pause, max(due, IDLE_POLL_MIN_SECONDS))

    def _pause_while_idle(self, seconds: float) -> None:
        """Sleep, but wake as soon as the last in-flight task ends."""
        if len(self.pool):
            self.pool.join(timeout=seconds)
        else:
            gevent.sleep(seconds)

    # -- one task ---------------------------------------------------------------------

    def _run_task(self, promise: Promise, deadline: Deadline | None) -> None:
        """Run one promise in a worker greenlet and settle it there; nothing escapes."""
        started = time.monotonic()
        outcome = self._execute(promise, deadline)
        self._conclude(promise, outcome, time.monotonic() - started)

    def _cancel_unstarted(self, promise: Promise) -> None:
        """Settle a promise that was queued for a worker but never started."""
        self._conclude(promise, Status.CANCELLED, 0.0)

    def _conclude(self, promise: Promise, outcome: Status, elapsed: float) -> None:
        promise.elapsed = elapsed
        promise.outcome = outcome
        self.stats.record(outcome, elapsed)
        if outcome is not _OK or self._debug:
            self._log_outcome(promise)

        try:
            self.provider.settle(promise)
        except Exception:
            self.log.exception(
                "task {}: the provider could not record its outcome ({}); the queue "
                "will deliver it again", promise.id, outcome.value,
            )
        if self.on_settled is not None:
            self.on_settled(promise)

    def _execute(self, promise: Promise, deadline: Deadline | None) -> Status:
        """Run the promise under its own timer, started from the worker's deadline.

        The timer is closed the moment ``run()`` returns or raises, before any handler
        below can switch greenlets, so that it can only ever fire inside this task.
        """
        try:
            if deadline is None:
                promise.run()
            else:
                timer = deadline.arm()
                try:
                    promise.run()
                finally:
                    timer.close()
        except gevent.Timeout as expired:
            if deadline is not None and expired is deadline.error:
                # The worker throws the same object at every task that times out:
                # drop what links it to this one.
                expired.__traceback__ = expired.__context__ = None
                return self._time_out(promise)
            promise.error = expired
            self.log.exception("task {} ({}) let a gevent.Timeout of its own escape",
                               promise.id, promise.describe())
            return Status.ERROR
        except RetryLater as retry:
            promise.retry_delay = retry.delay_seconds
            promise.error = retry
            return Status.RETRY
        except FatalTaskError as fatal:
            promise.error = fatal
            self._fatal = self._fatal or fatal
            self.stop(f"task {promise.id} raised a fatal error: {fatal}")
            return Status.FATAL
        except gevent.GreenletExit:
            return Status.CANCELLED
        except Exception as error:
            promise.error = error
            self.log.exception("task {} ({}) raised {}", promise.id, promise.describe(),
                               type(error).__name__)
            return Status.ERROR

        status = promise.status
        return _OK if status is _PENDING else status

    def _time_out(self, promise: Promise) -> Status:
        error = TaskTimeout(
            f"task {promise.id} ran past its timeout of {self.task_timeout}s",
            promise=promise,
        )
        promise.error = error
        try:
            with gevent.Timeout(TIMEOUT_HANDLER_GRACE_SECONDS):
                promise.on_timeout(error)
        except RetryLater:
            pass
        except (Exception, gevent.Timeout):
            self.log.exception("task {}: its timeout handler raised", promise.id)
        return Status.TIMEOUT

    def _log_outcome(self, promise: Promise) -> None:
        outcome = promise.outcome
        milliseconds = promise.elapsed * 1000
        if outcome is Status.OK:
            self.log.debug("task {} ({}) ok in {:.1f} ms", promise.id, promise.describe(),
                           milliseconds)
        elif outcome in (Status.FAILED, Status.RETRY, Status.TIMEOUT):
            self.log.warning("task {} ({}) attempt {} ended as {} after {:.1f} ms: {}",
                             promise.id, promise.describe(), promise.attempt, outcome.value,
                             milliseconds, promise.error)
        elif outcome is Status.CANCELLED:
            self.log.info("task {} cancelled by shutdown; it will be requeued", promise.id)

    # -- start and stop ---------------------------------------------------------------

    def _announce(self) -> None:
        self.log.info(
            "consumer starting: pid={} provider={} concurrency={} mode={} "
            "max_batch_collect_time={}s task_timeout={}s shutdown_timeout={}s",
            os.getpid(), self.provider.describe(), self.concurrency, self.mode.value,
            self.max_batch_collect_time, self.task_timeout, self.shutdown_timeout,
        )
        self._warn_about_file_limit()
        self._size_resolver_pool()
        self._next_progress_at = time.monotonic() + self.stats_interval
        self.last_tick = time.monotonic()
        self._tell("on_start")

    def _warn_about_file_limit(self) -> None:
        try:
            import resource

            soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):
            return

        needed = self.concurrency * FILES_PER_TASK + 64
        if soft_limit != resource.RLIM_INFINITY and soft_limit < needed:
            self.log.warning(
                "open-file limit {} is low for concurrency {} (want at least {}): "
                "connections will fail with 'Too many open files'; raise LimitNOFILE "
                "or ulimit -n", soft_limit, self.concurrency, needed,
            )

    def _size_resolver_pool(self) -> None:
        """Give every task slot a thread in the hub's pool, which name lookups use.

        gevent resolves names (even IP literals) in the hub's thread pool, 10 threads
        by default: a few lookups that hang would otherwise make every other task
        wait for a thread and time out.
        """
        pool = gevent.get_hub().threadpool
        wanted = min(self.concurrency + RESOLVER_SPARE_THREADS, RESOLVER_MAX_THREADS)
        if pool.maxsize < wanted:
            pool.maxsize = wanted
        self.log.debug("resolver {} with up to {} threads", type(gevent.get_hub().resolver)
                       .__module__, pool.maxsize)

    def _install_signal_handlers(self) -> list[Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        return [
            gevent.signal_handler(signal.SIGTERM, self._on_signal, "SIGTERM"),
            gevent.signal_handler(signal.SIGINT, self._on_signal, "SIGINT"),
        ]

    def _on_signal(self, name: str) -> None:
        """First signal: graceful stop. Second: cancel in-flight tasks now."""
        self._signals_seen += 1
        if self._signals_seen == 1:
            self.stop(f"{name} received")
            return

        self.log.warning("{} received again: cancelling {} in-flight task(s) now",
                         name, len(self.pool))
        gevent.spawn(self.pool.kill, block=False)

    def _shutdown(self) -> None:
        in_flight = len(self.pool)
        if in_flight:
            self.log.info("waiting up to {}s for {} in-flight task(s)", self.shutdown_timeout,
                          in_flight)
            if not self._join_ticking(self.shutdown_timeout):
                self.log.warning("cancelling {} task(s) still running after {}s; they are "
                                 "requeued", len(self.pool), self.shutdown_timeout)
                self.pool.kill(timeout=CANCEL_GRACE_SECONDS)

        # Idle workers end now rather than after their idle time; a task stuck even
        # through cancellation keeps its worker, as it kept its greenlet before.
        self.pool.close(timeout=CANCEL_GRACE_SECONDS)

        self.log.debug("closing provider {}", self.provider.describe())
        try:
            self.provider.close()
        except Exception:
            self.log.exception("provider {} failed to close cleanly", self.provider.describe())
        self.log.debug("provider closed")

        self.stats.finished_at = time.monotonic()
        self.log.info("consumer stopped: {}", _format_summary(self.stats.summary()))
        self._tell("on_stopped")

    def _join_ticking(self, timeout: float) -> bool:
        """Wait for the tasks in flight, still ticking: the watchdog runs during a stop."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.pool.join(timeout=max(0.0, min(remaining, SLOT_WAIT_SECONDS))):
                return True
            if remaining <= SLOT_WAIT_SECONDS:
                return False
            self._tick_if_due()

    def _tick_if_due(self) -> None:
        """Once per loop turn: one clock read, and the observers at most every tick."""
        now = time.monotonic()
        if now < self._next_tick_at:
            return
        self._next_tick_at = now + TICK_SECONDS
        self.last_tick = now
        for observer in self.observers:
            try:
                observer.on_tick(self, now)
            except Exception:
                self.log.exception("observer {!r} failed on a tick", observer)
        self._log_progress_if_due(now)

    def _tell(self, event: str, *args: Any) -> None:
        """Call ``event`` on every observer; one that fails is logged, never fatal."""
        for observer in self.observers:
            try:
                getattr(observer, event)(self, *args)
            except Exception:
                self.log.exception("observer {!r} failed on {}", observer, event)

    def _log_progress_if_due(self, now: float) -> None:
        if now < self._next_progress_at:
            return
        self._next_progress_at = now + self.stats_interval
        self.log.info("progress: {}; {} in flight", _format_summary(self.stats.summary()),
                      len(self.pool))


def _format_summary(summary: dict[str, object]) -> str:
    return " ".join(f"{key}={value}" for key, value in summary.items())


def _parse_mode(mode: str | Mode) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise ValueError(f"mode must be 'sliding' or 'batch', not {mode!r}") from None


def _check_arguments(
    concurrency: Any, collect_time: Any, task_timeout: Any, shutdown_timeout: Any
) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number of at least 1, not {concurrency!r}")
    if not isinstance(collect_time, (int, float)) or collect_time < 0:
        raise ValueError(
            f"max_batch_collect_time must be a number of seconds >= 0, not {collect_time!r}"
        )
    if task_timeout is not None and (
        not isinstance(task_timeout, (int, float)) or task_timeout <= 0
    ):
        raise ValueError(f"task_timeout must be seconds > 0 or None, not {task_timeout!r}")
    if not isinstance(shutdown_timeout, (int, float)) or shutdown_timeout < 0:
        raise ValueError(
            f"shutdown_timeout must be a number of seconds >= 0, not {shutdown_timeout!r}"
        )
