"""The states a promise moves through."""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """Where a promise stands.

    ``PENDING`` is the only non-final state. The final states decide what a queue does
    with the message behind the promise:

    ========== ==================================================== =============
    status     meaning                                              queue action
    ========== ==================================================== =============
    OK         the work succeeded and its handler returned          acknowledge
    FAILED     the work failed and its handler dealt with the error acknowledge
    RETRY      the handler asked for another try (``RetryLater``)   retry
    ERROR      an exception escaped the promise or its handler      retry
    TIMEOUT    the task ran past ``task_timeout``                   retry
    CANCELLED  shutdown interrupted the task                        requeue
    FATAL      the task raised ``FatalTaskError``                   requeue
    ========== ==================================================== =============

    Retries stop at the task's maximum number of attempts; then the message is
    dead-lettered.
    """

    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"
    RETRY = "retry"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    FATAL = "fatal"

    @property
    def is_final(self) -> bool:
        return self is not Status.PENDING

    @property
    def wants_retry(self) -> bool:
        return self in (Status.RETRY, Status.ERROR, Status.TIMEOUT)

    @property
    def wants_requeue(self) -> bool:
        return self in (Status.CANCELLED, Status.FATAL)
