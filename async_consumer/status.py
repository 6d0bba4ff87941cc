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

    # Members are singletons, so identity is their equality; hashing by identity keeps
    # dictionaries and sets keyed by status in C instead of Enum's hash of the name.
    __hash__ = object.__hash__

    #: Whether the promise is done (every status but ``PENDING``).
    is_final: bool
    #: Whether the queue should try the message again (RETRY, ERROR, TIMEOUT).
    wants_retry: bool
    #: Whether the queue should put the message back untouched (CANCELLED, FATAL).
    wants_requeue: bool


# Plain attributes set once, not properties: they are read for every task that ends,
# and a property that looks members up on the Enum class costs about a microsecond.
for _status in Status:
    _status.is_final = _status is not Status.PENDING
    _status.wants_retry = _status in (Status.RETRY, Status.ERROR, Status.TIMEOUT)
    _status.wants_requeue = _status in (Status.CANCELLED, Status.FATAL)
del _status
