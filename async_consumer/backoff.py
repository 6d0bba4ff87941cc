"""How long to wait before the next attempt of a failed task."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

DEFAULT_BACKOFF_BASE_SECONDS = 1.0
DEFAULT_BACKOFF_MAX_SECONDS = 300.0
DEFAULT_JITTER_FRACTION = 0.5


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter.

    The delay before attempt ``n + 1`` is ``base * 2 ** (n - 1)``, capped at ``maximum``,
    then spread by up to ``jitter`` of itself in either direction so that tasks that
    failed together do not come back together.
    """

    base: float = DEFAULT_BACKOFF_BASE_SECONDS
    maximum: float = DEFAULT_BACKOFF_MAX_SECONDS
    jitter: float = DEFAULT_JITTER_FRACTION

    def delay(self, failed_attempt: int, requested: float | None = None) -> float:
        """Seconds to wait after ``failed_attempt`` (1 for the first) has failed.

        ``requested`` (a server's Retry-After) wins over the schedule when given, up to
        ``maximum``: a server asking for a day does not park the job for a day.
        """
        if requested is not None:
            return min(max(requested, 0.0), self.maximum)

        exponent = min(max(failed_attempt - 1, 0), 62)
        planned = min(self.base * (2 ** exponent), self.maximum)
        spread = planned * self.jitter * (2 * random.random() - 1)
        return min(max(planned + spread, 0.0), self.maximum)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` for a missing or unreadable value, so that the backoff
    schedule applies instead.
    """
    if not value:
        return None

    text = value.strip()
    if text.isdigit():
        return float(text)

    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    current = time.time() if now is None else now
    return max(moment.timestamp() - current, 0.0)
