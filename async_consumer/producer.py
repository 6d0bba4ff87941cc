"""Enqueue jobs from ordinary synchronous code: a Flask view, a cron script, the CLI.

Nothing here needs gevent or monkey-patching::

    from async_consumer import producer

    with producer.Producer("worker.ini") as jobs:
        jobs.enqueue([{"url": "http://127.0.0.1:8080/hook", "json": {"order": 17}}])

The producer writes to whichever provider ``[provider] type`` names: the SQLite
queue file, RabbitMQ or Redis.
"""

from __future__ import annotations

import abc
import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import ConfigError
from .jobs import HttpJob, JobError, parse_job

#: One message to publish: (job id, payload text, max attempts).
Message = tuple[str, str, int]


class Publisher(abc.ABC):
    """Writes messages to a queue and manages its dead letters, without gevent."""

    @abc.abstractmethod
    def publish_many(self, messages: Iterable[Message]) -> int:
        """Store every message durably before returning; returns how many."""

    @abc.abstractmethod
    def list_dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered messages, oldest first: ``ref``, ``id``, ``attempts``, ``reason``."""

    @abc.abstractmethod
    def requeue_dead(self, refs: list[str] | None = None) -> int:
        """Put dead letters (all, or those ``ref``s) back with fresh attempts."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Message counts by state, as far as the queue knows them."""

    def close(self) -> None:
        """Release the connection or file."""

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SQLitePublisher(Publisher):
    """Publishes into the embedded queue file."""

    def __init__(self, config: Config) -> None:
        from .runner import open_queue

        self.queue = open_queue(config)

    def publish_many(self, messages: Iterable[Message]) -> int:
        return self.queue.put_many(messages)

    def list_dead(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {"ref": str(job.job_id), "id": job.key, "attempts": job.attempts,
             "max_attempts": job.max_attempts, "reason": job.reason, "died_at": job.died_at}
            for job in self.queue.list_dead(limit)
        ]

    def requeue_dead(self, refs: list[str] | None = None) -> int:
        if refs is None:
            return self.queue.requeue_dead(None)
        try:
            return self.queue.requeue_dead([int(ref) for ref in refs])
        except ValueError:
            raise JobError(f"dead-letter refs of the sqlite queue are row numbers, not {refs}")

    def counts(self) -> dict[str, int]:
        return self.queue.counts()

    def close(self) -> None:
        self.queue.close()


def open_publisher(config: Config | str | os.PathLike[str]) -> Publisher:
    """The publisher for the provider a configuration names."""
    if not isinstance(config, Config):
        config = load_config(config)

    provider_type = config.provider.type
    if provider_type == "sqlite":
        return SQLitePublisher(config)
    if provider_type == "rabbitmq":
        from .rabbitmq_provider import RabbitMQPublisher

        return RabbitMQPublisher.from_config(config)
    if provider_type == "redis":
        from .redis_provider import RedisPublisher

        return RedisPublisher.from_config(config)
    raise ConfigError(
        "jobs can only be enqueued into a built-in provider", source=config.source,
        section="provider", key="type", value=provider_type,
        expected="sqlite, rabbitmq or redis",
    )


class Producer:
    """Checks HTTP jobs and publishes them.

    Every job is checked before any is published. One producer may be kept for the
    life of an application and shared by its threads: calls are serialised, and a
    connection the broker dropped while idle is reopened.

    Args:
        config: a loaded :class:`Config`, or the path of the worker's INI file.
    """

    def __init__(self, config: Config | str | os.PathLike[str]) -> None:
        self.config = config if isinstance(config, Config) else load_config(Path(config))
        self.publisher = open_publisher(self.config)
        # Threads of a web application share a producer; in a patched process this is
        # gevent's lock, which is what its greenlets need.
        self._lock = threading.Lock()

    def enqueue(self, jobs: Iterable[dict[str, Any] | HttpJob]) -> int:
        """Check every job, then publish them; a bad job raises ``JobError`` naming it
        (by position, from 1) and nothing is published."""
        checked = []
        for position, job in enumerate(jobs, start=1):
            try:
                checked.append(job if isinstance(job, HttpJob) else parse_job(job))
            except JobError as error:
                raise JobError(f"job {position}: {error.reason}") from None

        default_attempts = self.config.retry.max_attempts
        messages = [(job.id, job.to_payload(), job.max_attempts or default_attempts)
                    for job in checked]
        with self._lock:
            return self._publish(messages)

    def _publish(self, messages: list[Message]) -> int:
        """Publish, reopening the connection once if it was lost while idle.

        A broker drops a connection that sat unused past its heartbeat; a producer kept
        by a web application for its lifetime must survive that. A message that was
        stored before the connection broke may be published twice (at least once).
        """
        try:
            return self.publisher.publish_many(messages)
        except (JobError, ConfigError):
            raise
        except Exception:
            with contextlib.suppress(Exception):
                self.publisher.close()
            self.publisher = open_publisher(self.config)
            return self.publisher.publish_many(messages)

    def close(self) -> None:
        self.publisher.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def enqueue(
    jobs: Iterable[dict[str, Any] | HttpJob], config: Config | str | os.PathLike[str]
) -> int:
    """Publish ``jobs`` with a producer opened for this call only."""
    with Producer(config) as producer:
        return producer.enqueue(jobs)
