"""The worker greenlets that run a consumer's tasks.

Starting a greenlet per task costs more than a short task itself. A
:class:`WorkerPool` keeps up to ``concurrency`` long-lived :class:`TaskGreenlet`
workers that take promises from a local queue and run them one after another;
workers start as work arrives and end after a while without any.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import gevent
from gevent.event import Event
from gevent.hub import Waiter

from .promise import Promise

#: How long a worker greenlet with nothing to do waits for work before it ends.
WORKER_IDLE_SECONDS = 5.0
#: How long a worker runs tasks back to back before it lets the hub poll I/O and
#: timers, in case none of them blocked (gevent's own switch interval), and the pause
#: it then takes: positive, since ``sleep(0)`` returns before timers are looked at.
WORKER_TURN_SECONDS = 0.005
WORKER_YIELD_SECONDS = 0.0001


class TaskGreenlet(gevent.Greenlet):
    """The greenlet tasks run in; code inside a task can read the consumer's size.

    One such greenlet runs many tasks, one after another (see :class:`WorkerPool`).
    """

    concurrency = 1
    #: The promise this worker is running (until it is settled), or ``None``.
    promise: Promise | None = None


def current_concurrency(default: int = 1) -> int:
    """The concurrency of the consumer running the current task, or ``default``.

    The HTTP promise sizes its connection pool from this, so that ``concurrency``
    requests to one host never overflow the pool.
    """
    return getattr(gevent.getcurrent(), "concurrency", default)


class _Parked:
    """A worker waiting for work; ``woken`` tells work from retirement."""

    __slots__ = ("waiter", "woken")

    def __init__(self) -> None:
        self.waiter = Waiter()
        self.woken = False


class Deadline:
    """A worker's task timeout: a fresh timer for every task, one exception per worker.

    A ``gevent.Timeout`` cannot be re-armed safely: libev keeps a stopped timer's
    remaining time, so a restarted Timeout runs only for what its previous run left,
    and for nothing at all once it has fired. A bare loop timer per task is correct
    and costs less than a Timeout per task; the exception it throws is the worker's
    own, so that the consumer tells it from a task's own ``gevent.Timeout``.
    """

    __slots__ = ("seconds", "error", "_loop", "_throw")

    def __init__(self, seconds: float, worker: gevent.Greenlet) -> None:
        self.seconds = seconds
        self.error = gevent.Timeout(seconds)
        self.error.close()  # only the exception is used, never its own timer
        self._loop = gevent.get_hub().loop
        self._throw = worker.throw

    def arm(self) -> Any:
        """Start this task's timer; the caller closes it the moment the task ends."""
        timer = self._loop.timer(self.seconds)
        timer.start(self._throw, self.error, update=True)
        return timer


#: What a worker does with one promise: run it under the deadline and settle it.
RunTask = Callable[[Promise, "Deadline | None"], None]


class WorkerPool:
    """At most ``size`` long-lived worker greenlets taking promises from a local queue.

    A greenlet per task costs a creation, a start callback and a teardown for every
    task. A worker instead runs promise after promise in the same greenlet, under a
    :class:`Deadline` of its own, and parks when the queue is empty. After
    ``WORKER_TURN_SECONDS`` of tasks it yields to the hub once, so that tasks which
    never block cannot starve I/O and timers.

    Workers are added one at a time. Queuing work wakes a parked worker (or starts
    one) unless another is already on its way. A worker that takes a promise and
    leaves more behind asks the hub to add another worker once it has switched
    away, and the hub does so only if that worker blocked, not if it merely paused
    for its turn. A burst of blocking tasks so fans out to as many workers as it
    needs, while tasks that never block are taken by one worker, without a switch
    between them and without a stream of wake-ups that would keep the hub from
    polling. A worker parked for ``idle_seconds`` ends.

    A promise counts as in flight from :meth:`submit` until it is settled, so
    ``len(pool)`` and :meth:`free_count` mean what they meant with a greenlet per
    task. Each task starts with an empty ``contextvars`` context, as it would in a
    new greenlet; greenlet-local storage (``gevent.local``), however, is shared by
    the tasks of one worker.
    """

    def __init__(
        self,
        size: int,
        run_task: RunTask,
        cancel_task: Callable[[Promise], None],
        *,
        task_timeout: float | None,
        greenlet_class: type[TaskGreenlet] = TaskGreenlet,
        idle_seconds: float = WORKER_IDLE_SECONDS,
    ) -> None:
        self.size = size
        self.greenlet_class = greenlet_class
        self.idle_seconds = idle_seconds
        self._run_task = run_task
        self._cancel_task = cancel_task
        self._task_timeout = task_timeout
        self._queue: collections.deque[Promise] = collections.deque()
        self._workers: set[TaskGreenlet] = set()
        # Insertion-ordered, for "most recently parked first" and O(1) removal.
        self._idle: dict[_Parked, None] = {}
        self._starting = 0
        self._fan_out_pending = False
        self._yielding: set[TaskGreenlet] = set()
        self._in_flight = 0
        self._waiters: list[tuple[int, Event]] = []
        self._closing = False

    # -- what the consumer sees ---------------------------------------------------------

    def __len__(self) -> int:
        return self._in_flight

    def free_count(self) -> int:
        return max(0, self.size - self._in_flight)

    @property
    def greenlets(self) -> set[TaskGreenlet]:
        """The live worker greenlets."""
        return set(self._workers)

    def submit(self, promises: Iterable[Promise]) -> None:
        """Queue promises for the workers; they count as in flight from now on.

        Once the pool was killed no worker takes work any more: promises that arrive
        after that (fetched while the kill happened) are cancelled at once.
        """
        before = len(self._queue)
        self._queue.extend(promises)
        self._in_flight += len(self._queue) - before
        if self._closing:
            self._cancel_queued()
        elif self._queue and not self._starting:
            self._add_worker()

    def wait_available(self, timeout: float | None = None) -> bool:
        """Wait until a slot is free; ``False`` if ``timeout`` passed first."""
        return self._wait_until(self.size - 1, timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is in flight; ``False`` if ``timeout`` passed first."""
        return self._wait_until(0, timeout)

    def kill(self, block: bool = True, timeout: float | None = None) -> None:
        """Cancel all work: running tasks get ``GreenletExit``, queued ones never start.

        Queued promises are settled as cancelled here, in the caller's greenlet, since
        no task greenlet ever ran them.
        """
        self._closing = True
        self._cancel_queued()

        busy = [worker for worker in self._workers if worker.promise is not None]
        gevent.killall(busy, block=block, timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        """End the workers that have nothing to do; busy ones finish their task first."""
        self._closing = True
        loop = gevent.get_hub().loop
        while self._idle:
            parked, _ = self._idle.popitem()
            loop.run_callback(parked.waiter.switch, None)

        waiting = [worker for worker in self._workers if worker.promise is None]
        gevent.joinall(waiting, timeout=timeout)

    # -- the workers --------------------------------------------------------------------

    def _add_worker(self) -> None:
        """Wake the most recently parked worker, or start one if none is parked."""
        if self._idle:
            parked, _ = self._idle.popitem()
            parked.woken = True
            self._starting += 1
            gevent.get_hub().loop.run_callback(parked.waiter.switch, None)
        elif len(self._workers) < self.size:
            worker = self.greenlet_class(self._work)
            worker.concurrency = self.size
            worker.promise = None
            self._workers.add(worker)
            self._starting += 1
            worker.start()

    def _work(self) -> None:
        """The body of every worker greenlet."""
        worker = cast(TaskGreenlet, gevent.getcurrent())
        deadline = Deadline(self._task_timeout, worker) if self._task_timeout else None
        self._starting -= 1
        turn_started = time.monotonic()
        try:
            while True:
                promise = self._take(worker)
                if promise is None:
                    if self._closing or not self._park():
                        return
                    turn_started = time.monotonic()
                    continue

                if worker.gr_context is not None:
                    worker.gr_context = None
                worker.promise = promise
                try:
                    self._run_task(promise, deadline)
                finally:
                    worker.promise = None
                    self._task_done()

                if time.monotonic() - turn_started >= WORKER_TURN_SECONDS:
                    self._yield_turn(worker)
                    turn_started = time.monotonic()
        finally:
            self._workers.discard(worker)
            if self._queue and not self._starting and not self._closing:
                self._add_worker()

    def _take(self, worker: TaskGreenlet) -> Promise | None:
        """The next queued promise, or ``None``; the rest gets another worker if needed."""
        queue = self._queue
        if self._closing or not queue:
            return None

        promise = queue.popleft()
        if queue and not self._starting and not self._fan_out_pending:
            self._fan_out_pending = True
            gevent.get_hub().loop.run_callback(self._fan_out, worker)
        return promise

    def _fan_out(self, worker: TaskGreenlet) -> None:
        """Run by the hub once ``worker`` switched away: add a worker if it blocked.

        A worker pausing for its turn comes back for the queue itself; waking another
        one then would only chain callbacks that keep the hub from polling.
        """
        self._fan_out_pending = False
        if (self._queue and not self._starting and not self._closing
                and worker not in self._yielding):
            self._add_worker()

    def _yield_turn(self, worker: TaskGreenlet) -> None:
        self._yielding.add(worker)
        try:
            gevent.sleep(WORKER_YIELD_SECONDS)
        finally:
            self._yielding.discard(worker)

    def _park(self) -> bool:
        """Wait for work; ``False`` when the worker should end instead."""
        parked = _Parked()
        self._idle[parked] = None
        timer = gevent.get_hub().loop.timer(self.idle_seconds, ref=False)
        timer.start(parked.waiter.switch, None)
        try:
            parked.waiter.get()
        finally:
            timer.close()
            if parked.woken:
                self._starting -= 1
            else:
                self._idle.pop(parked, None)
        return parked.woken

    def _cancel_queued(self) -> None:
        while self._queue:
            promise = self._queue.popleft()
            try:
                self._cancel_task(promise)
            finally:
                self._task_done()

    def _task_done(self) -> None:
        self._in_flight -= 1
        if self._waiters:
            self._notify()

    # -- waiting for slots --------------------------------------------------------------

    def _notify(self) -> None:
        in_flight = self._in_flight
        still_waiting = []
        for most, event in self._waiters:
            if in_flight <= most:
                event.set()
            else:
                still_waiting.append((most, event))
        self._waiters = still_waiting

    def _wait_until(self, most: int, timeout: float | None) -> bool:
        """Block until at most ``most`` tasks are in flight, or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._in_flight > most:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False

            entry = (most, Event())
            self._waiters.append(entry)
            try:
                entry[1].wait(remaining)
            finally:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return True
