"""What a queue does with a finished task: the one rule every queue provider follows.

| outcome                         | action                                             |
|---------------------------------|----------------------------------------------------|
| OK, FAILED (handled)            | acknowledge, after the result line is written      |
| RETRY, ERROR, TIMEOUT           | retry after a backoff delay, until max_attempts    |
| ... at the last attempt         | dead-letter with the reason, after the result line |
| CANCELLED, FATAL                | requeue without spending an attempt                |
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, NamedTuple

from .backoff import Backoff
from .promise import Promise
from .status import Status


#: Deliveries lost to a worker that died (SIGKILL, OOM) allowed beyond ``max_attempts``
#: before a message is buried: a crash is rarely the job's fault, but a job that kills
#: every worker must not be delivered forever.
LOST_DELIVERY_GRACE = 2


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    REQUEUE = "requeue"


#: ``Action.value`` goes through an enum descriptor; counting reads it for every job.
_ACTION_NAMES = {action: action.value for action in Action}


class Decision(NamedTuple):
    """What to do with one message, and the result line to write first (if final).

    A named tuple rather than a frozen dataclass: one is made for every job, and a
    tuple is built several times faster while staying just as immutable.
    """

    action: Action
    delay_seconds: float = 0.0
    reason: str | None = None
    record: dict[str, Any] | None = None


def decide(
    promise: Promise, key: str, attempt: int, max_attempts: int, backoff: Backoff
) -> Decision:
    """The decision for a settled promise on its ``attempt`` of ``max_attempts``."""
    outcome = promise.outcome
    if outcome is Status.OK:
        return Decision(Action.ACK, 0.0, None, result_record(key, "ok", attempt, None, promise))
    if outcome.wants_requeue:
        return Decision(Action.REQUEUE)

    if not outcome.wants_retry:
        error = None if promise.error is None else str(promise.error)
        return Decision(Action.ACK, record=result_record(key, "failed", attempt, error, promise))

    error = str(promise.error or outcome.value)
    if attempt >= max_attempts:
        reason = f"gave up after {attempt} attempt(s): {error}"
        record = result_record(key, "failed", attempt, reason, promise)
        return Decision(Action.DEAD_LETTER, reason=reason, record=record)

    delay = backoff.delay(attempt, promise.retry_delay)
    return Decision(Action.RETRY, delay_seconds=delay, reason=error)


def undeliverable(key: str, attempts: int, reason: str) -> Decision:
    """Dead-letter a message that never became a task (undecodable, attempts used up)."""
    return Decision(Action.DEAD_LETTER, reason=reason,
                    record=result_record(key, "failed", attempts, reason))


def given_up(key: str, attempt: int, max_attempts: int, detail: str = "") -> Decision | None:
    """Dead-letter a delivery whose earlier deliveries all ended without an outcome.

    ``None`` while the attempts and the grace deliveries last: the delivery may run.
    """
    if attempt <= max_attempts + LOST_DELIVERY_GRACE:
        return None
    return undeliverable(key, attempt - 1, (
        f"gave up: no outcome after {attempt - 1} deliveries; the worker stopped or "
        f"hung during each{detail}"))


def admit(transformer: Callable[[str], Promise], payload: str | bytes, key: str,
          attempt: int) -> Promise | Decision:
    """The promise for one delivery, or its dead-letter decision if it cannot run.

    A payload in bytes is decoded as UTF-8 here, so that one that is not UTF-8 is
    dead-lettered like any other that cannot run.
    """
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        promise = transformer(text)
    except ValueError as error:
        return undeliverable(key, attempt, f"cannot be run: {error}")

    promise.attempt = attempt
    return promise


def result_record(
    key: str, status: str, attempts: int, error: str | None, promise: Promise | None = None
) -> dict[str, Any]:
    """One line of the results file."""
    record: dict[str, Any] = {"id": key, "status": status, "status_code": None}
    elapsed_ms = None
    if promise is not None:
        extra = promise.result_fields()
        if extra:
            record.update(extra)
        elapsed_ms = round(promise.elapsed * 1000, 1)
    record["attempts"] = attempts
    record["elapsed_ms"] = elapsed_ms
    record["error"] = error
    record["finished_at"] = round(time.time(), 3)
    return record


@dataclass
class DeliveryCounts:
    """Final outcomes seen by a provider, for the run summary."""

    ok: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    by_action: dict[str, int] = field(default_factory=dict)

    def count(self, decision: Decision) -> None:
        action = decision.action
        name = _ACTION_NAMES[action]
        self.by_action[name] = self.by_action.get(name, 0) + 1
        if action is Action.RETRY:
            self.retried += 1
        elif action is Action.REQUEUE:
            self.requeued += 1
        elif decision.record is not None and decision.record["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self.dead_lettered += action is Action.DEAD_LETTER

    @property
    def finished(self) -> int:
        return self.ok + self.failed
