"""Helpers for the RabbitMQ tests: fresh queues, worker INI files, worker processes and
a look at what a queue holds, all against the broker on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from async_consumer.rabbitmq_provider import (
    HEADER_ATTEMPTS,
    RETRY_BUCKETS_MS,
    RabbitMQPublisher,
    dead_queue_name,
    retry_queue_name,
)
from conftest import stop_process, wait_until, write_ini

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Longest any wait-for-something loop in these tests may poll.
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Peeked:
    """One message seen in a queue without taking it."""

    message_id: str | None
    body: bytes
    headers: dict[str, Any]
    redelivered: bool

    @property
    def attempts(self) -> int:
        return int(self.headers.get(HEADER_ATTEMPTS, -1))


def broker_url(port: int = 5672) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/%2F"


def new_queue_name(label: str) -> str:
    return f"ac-test-{label}-{uuid.uuid4().hex[:10]}"


def all_queue_names(queue: str) -> list[str]:
    """Every queue the provider could have made for ``queue``."""
    return [queue, dead_queue_name(queue)] + [retry_queue_name(queue, ms)
                                              for ms in RETRY_BUCKETS_MS]


@contextlib.contextmanager
def admin_channel() -> Iterator[Any]:
    """A channel of the test's own on the local broker."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


def delete_queues(queue: str) -> None:
    with admin_channel() as channel:
        for name in all_queue_names(queue):
            channel.queue_delete(name)


def peek(queue: str, limit: int = 10_000) -> list[Peeked]:
    """The messages in ``queue``, in order; they go back when the channel closes."""
    seen = []
    with admin_channel() as channel:
        for _ in range(limit):
            method, properties, body = channel.basic_get(queue)
            if method is None:
                break
            seen.append(Peeked(properties.message_id, body, dict(properties.headers or {}),
                               bool(method.redelivered)))
    return seen


def queue_exists(name: str) -> bool:
    try:
        with admin_channel() as channel:
            channel.queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return False
        raise


def counts(queue: str) -> dict[str, int]:
    with RabbitMQPublisher(BROKER_URL, queue) as publisher:
        return publisher.counts()


def publish_jobs(queue: str, jobs: list[tuple[str, str, int]]) -> None:
    """Publish ``(id, payload, max_attempts)`` messages the way the producer does."""
    with RabbitMQPublisher(BROKER_URL, queue) as publisher:
        assert publisher.publish_many(jobs) == len(jobs)


def publish_raw(queue: str, body: bytes, message_id: str | None = None) -> None:
    """A message as a foreign publisher would send it: no attempt headers."""
    with admin_channel() as channel:
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(
            message_id=message_id, delivery_mode=2), mandatory=True)


def worker_ini(directory: Path, queue: str, *, name: str = "worker.ini",
               results: str = "results.jsonl", concurrency: int = 10, url: str = "",
               provider: str = "", consumer: str = "", retry: str = "",
               backoff: tuple[float, float] = (0.05, 0.2)) -> Path:
    return write_ini(directory, (
        "[consumer]\n"
        f"concurrency = {concurrency}\n"
        "idle_poll_max = 0.2\n"
        "max_batch_collect_time = 0\n"
        f"{consumer}"
        "[provider]\n"
        "type = rabbitmq\n"
        f"url = {url}\n"
        f"queue = {queue}\n"
        f"{provider}"
        "[retry]\n"
        f"backoff_base = {backoff[0]}\n"
        f"backoff_max = {backoff[1]}\n"
        f"{retry}"
        "[results]\n"
        f"path = {results}\n"
        "[logging]\n"
        "level = INFO\n"
    ), name)


class Workers:
    """``async-consumer run`` processes of one test; any left alive are killed at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, ini: str = "worker.ini", label: str = "worker"
              ) -> subprocess.Popen:
        with open(self.directory / f"{label}.out", "w") as out, \
                open(self.directory / f"{label}.err", "w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "async_consumer", "run", "-c", ini, *args],
                cwd=self.directory, stdout=out, stderr=err,
            )
        self.started.append(process)
        return process

    def log(self, label: str) -> str:
        return (self.directory / f"{label}.err").read_text()

    def stop_all(self) -> None:
        for process in self.started:
            stop_process(process, signal.SIGKILL)


def wait_until_idle(queue: str, files: list[Path], quiet: float = 1.0) -> None:
    """Wait until the queue has nothing ready and no result line appeared for ``quiet``
    seconds: a worker with free slots starts what it holds at once, so by then no
    worker holds anything (redelivered duplicates included)."""
    state = {"lines": -1, "since": time.monotonic()}

    def idle() -> bool:
        lines = sum(map(line_count, files))
        now = time.monotonic()
        if lines != state["lines"]:
            state.update(lines=lines, since=now)
            return False
        return now - state["since"] >= quiet and counts(queue)["ready"] == 0

    wait_until(idle, "the workers to go idle")


def line_count(path: Path) -> int:
    """Complete lines so far; safe while a worker is still appending."""
    return path.read_bytes().count(b"\n") if path.exists() else 0
