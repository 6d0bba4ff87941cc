"""Where promises come from, and where their outcomes go back to."""

from __future__ import annotations

import abc
import collections
from collections.abc import Callable, Iterable

from .promise import Promise

#: Turns a raw queue message (the job's JSON text, or any text a custom producer
#: wrote) into a promise; raising ``ValueError`` dead-letters the message at once.
Transformer = Callable[[str], Promise]


class Provider(abc.ABC):
    """The source of work for a consumer.

    Only :meth:`get` is required. A provider backed by a queue also implements
    :meth:`settle`, which the consumer calls in the task's greenlet once the task has
    ended and its handler has returned: that is the moment to acknowledge, retry or
    dead-letter the message, never earlier.
    """

    @abc.abstractmethod
    def get(self) -> Promise | None:
        """Return the next promise, or ``None`` when nothing is ready right now.

        It must not block for long: the consumer polls an empty provider with a
        growing pause of its own.
        """

    def get_batch(self, max_count: int) -> list[Promise]:
        """Return up to ``max_count`` ready promises.

        The consumer asks for no more than it has free slots, so a provider that
        claims messages here never holds more than the consumer can start. Queue
        providers override this to fetch many messages in one round trip.
        """
        batch: list[Promise] = []
        while len(batch) < max_count:
            promise = self.get()
            if promise is None:
                break
            batch.append(promise)
        return batch

    def settle(self, promise: Promise) -> None:
        """Act on ``promise.outcome``: acknowledge, retry, requeue or dead-letter."""

    def has_pending_work(self) -> bool:
        """Whether work may still appear although :meth:`get` returned nothing.

        A queue with delayed retries or messages leased by a dead worker answers
        ``True``; ``consume(until_empty=True)`` keeps going until this is ``False``.
        """
        return False

    def seconds_until_ready(self) -> float | None:
        """How soon delayed work (a retry) becomes ready, if the provider knows.

        The consumer then idles no longer than that, so a retry starts on time instead
        of up to ``idle_poll_max`` late. ``None``: unknown or nothing delayed.
        """
        return None

    def close(self) -> None:
        """Flush outstanding acknowledgements and release resources."""

    def describe(self) -> str:
        """One line for the startup log."""
        return type(self).__name__

    def queue_depth(self) -> int | None:
        """How many messages wait in the queue, for the metrics; ``None``: unknown.

        Called only when metrics are scraped, never on the task path.
        """
        return None


class MemoryProvider(Provider):
    """An in-memory provider: the twin of the queue providers for tests and scripts.

    It hands out the promises it was given, in order, and records every settled
    promise in :attr:`settled`. Cancelled promises are put back at the front, like a
    queue's requeue.
    """

    def __init__(self, promises: Iterable[Promise] = ()) -> None:
        self._ready: collections.deque[Promise] = collections.deque(promises)
        self.settled: list[Promise] = []
        self.closed = False

    def put(self, promise: Promise) -> None:
        self._ready.append(promise)

    def get(self) -> Promise | None:
        if not self._ready:
            return None
        return self._ready.popleft()

    def get_batch(self, max_count: int) -> list[Promise]:
        """Take up to ``max_count`` promises in one step rather than one ``get`` each."""
        ready = self._ready
        if len(ready) <= max_count:
            batch = list(ready)
            ready.clear()
            return batch
        return [ready.popleft() for _ in range(max_count)]

    def settle(self, promise: Promise) -> None:
        self.settled.append(promise)
        if promise.outcome.wants_requeue:
            self._ready.appendleft(promise)

    def close(self) -> None:
        self.closed = True

    def __len__(self) -> int:
        return len(self._ready)
