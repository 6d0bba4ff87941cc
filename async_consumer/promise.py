"""The unit of work the consumer schedules.

A promise can be written in two styles, both first class:

* blocking style: override :meth:`Promise.run`; its body runs in a greenlet and may
  block cooperatively (sockets, ``gevent.sleep``). Returning normally means success.
* polling style, as in the PHP library this project grew from: override
  :meth:`Promise.start` to begin a non-blocking operation and keep :attr:`status`
  ``PENDING`` until it is done. The default :meth:`run` polls the status with a
  growing interval, so a pending promise never spins the hub.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import gevent

from .errors import PromiseError, TaskTimeout
from .status import Status

#: First and largest pause between two looks at a polling-style promise's status.
POLL_INTERVAL_MIN_SECONDS = 0.001
POLL_INTERVAL_MAX_SECONDS = 0.05

_sequence = itertools.count(1)
_PROCESS_TAG = f"{os.getpid():x}"


def _next_task_id() -> str:
    return f"t{_PROCESS_TAG}-{next(_sequence)}"


class Promise:
    """One unit of work with a status.

    Attributes:
        id: names the task in every log line; queue providers set it to the job's id.
        status: the promise's own report of its work (``PENDING`` until done).
        outcome: what the consumer concluded once the task ended; queues act on it.
        attempt: which delivery of the underlying message this is (1 for the first).
        retry_delay: set by ``RetryLater``; the provider's backoff applies when ``None``.
        error: the exception that ended the task, if any.
        elapsed: seconds the task ran, set by the consumer.
    """

    def __init__(self, task_id: str | None = None) -> None:
        cls = type(self)
        if cls.run is Promise.run and cls.start is Promise.start:
            raise TypeError(
                f"{cls.__name__} must override run() (blocking style) or start() "
                "(polling style); a bare Promise has no work to do"
            )
        self.id = task_id or _next_task_id()
        self.status = Status.PENDING
        self.outcome = Status.PENDING
        self.attempt = 1
        self.retry_delay: float | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        #: Free slot for the provider that made this promise (a delivery tag, a row id).
        self.receipt: Any = None

    def start(self) -> None:
        """Begin a non-blocking operation (polling style). The default does nothing."""

    def run(self) -> None:
        """Do the work (blocking style), or start it and wait for the status to settle.

        The consumer runs this inside the task's greenlet, under the task timeout.
        """
        self.start()
        self.wait_settled()

    def wait_settled(self) -> None:
        """Poll :attr:`status` until it leaves ``PENDING``, with a growing pause.

        A positive sleep (never ``sleep(0)``) lets the hub poll I/O and timers between
        looks, so pending promises cannot starve other greenlets.
        """
        pause = POLL_INTERVAL_MIN_SECONDS
        while self.status is Status.PENDING:
            gevent.sleep(pause)
            pause = min(pause * 2, POLL_INTERVAL_MAX_SECONDS)

    def on_timeout(self, error: TaskTimeout) -> None:
        """Called in the task's greenlet when the task ran past its timeout.

        The default hands the error to :meth:`handle_exception`, so that a handler's
        ``on_exception`` sees timeouts like any other failure.
        """
        self.handle_exception(error)

    def handle_exception(self, error: PromiseError) -> None:
        """Deliver a failure to whoever handles this promise. The default ignores it."""

    def result_fields(self) -> dict[str, Any]:
        """Extra fields for this task's line in a results file (a status code, ...)."""
        return {}

    def describe(self) -> str:
        """A short text for log lines, such as the HTTP method and host."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status.value}>"


#: The pause :func:`yield_control` takes; positive so the hub polls I/O and timers.
YIELD_SECONDS = 0.001


def yield_control() -> None:
    """Let other greenlets run from inside a long CPU-bound callback.

    It sleeps a little instead of ``gevent.sleep(0)``: a zero sleep requeues the caller
    before the loop polls for I/O and timers, so a busy loop of "work, sleep(0)" can
    still starve greenlets that wait on sockets or timeouts.
    """
    gevent.sleep(YIELD_SECONDS)
