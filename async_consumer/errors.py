"""The exception hierarchy.

Everything the framework raises derives from :class:`AsyncConsumerError`, except the
signals that must cut through a task's own ``except Exception`` blocks: those derive
from ``BaseException`` the way ``gevent.Timeout`` and ``GreenletExit`` do.
"""

from __future__ import annotations

from typing import Any


class AsyncConsumerError(Exception):
    """Root of the errors this package raises."""


class ConfigError(AsyncConsumerError):
    """A setting is missing or wrong; raised before anything starts.

    The message names where the value came from (file, section, key), the value that
    was given and what is expected, so that an operator can fix it without the docs.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        section: str | None = None,
        key: str | None = None,
        value: Any = None,
        expected: str | None = None,
    ) -> None:
        self.source = source
        self.section = section
        self.key = key
        self.value = value
        self.expected = expected
        self.reason = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.section:
            where.append(f"[{self.section}]")
        if self.key:
            where.append(self.key)

        text = self.reason
        if where:
            text = f"{' '.join(where)}: {text}"
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.expected:
            text += f"; expected {self.expected}"
        return text


class QueueError(AsyncConsumerError):
    """The queue cannot do what was asked: lock wait ran out, closed, used after fork."""


class PromiseError(AsyncConsumerError):
    """The error a handler's ``on_exception`` receives.

    ``__cause__`` holds the original exception (a ``requests`` error, a timeout, ...).
    ``response`` is set when a server answered, for example with a 4xx or 5xx status.
    ``promise`` is the task the error belongs to.
    """

    def __init__(self, message: str, *, promise: Any = None, response: Any = None) -> None:
        super().__init__(message)
        self.promise = promise
        self.response = response


class TaskTimeout(PromiseError):
    """A task ran past its ``task_timeout`` and was interrupted."""


class TaskCancelled(PromiseError):
    """A task was cancelled by shutdown; it is requeued without spending an attempt."""


class RetryLater(AsyncConsumerError):
    """Raised from a handler to ask for the task to be tried again.

    ``delay_seconds`` overrides the backoff schedule (for example a server's
    ``Retry-After``); ``None`` lets the provider's backoff choose.
    """

    def __init__(self, reason: str, delay_seconds: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_seconds = delay_seconds


class FatalTaskError(AsyncConsumerError):
    """Raised by a task or handler to stop the whole consumer cleanly.

    The consumer stops taking work, lets the other in-flight tasks finish within its
    shutdown timeout, closes the provider and then re-raises this error from
    ``consume()``. The task that raised it is requeued.
    """


class PatchError(FatalTaskError):
    """gevent's monkey-patching is missing, incomplete or happened too late.

    It is fatal: a consumer that meets it stops instead of running tasks one after
    another on blocking sockets.
    """
