"""Helpers for the Redis provider tests: worker INI files, waiting, reading the stream.

Every test works on a queue name of its own (a uuid), so tests never see each
other's entries and the keys can be deleted afterwards without touching anything
else on the server.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from async_consumer.errors import RetryLater
from async_consumer.promise import Promise
from async_consumer.redis_provider import Keys
from conftest import ListHandler, wait_until  # noqa: F401 (wait_until is re-exported)

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
POLL_SECONDS = 0.05


def new_queue_name() -> str:
    return f"ac-test-{uuid.uuid4().hex}"


def client() -> redis.Redis:
    """A plain client for the test's own checks; it never touches other keys."""
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=10)


def delete_queue(queue: str) -> None:
    keys = Keys.for_queue(queue)
    with client() as connection:
        connection.delete(keys.stream, keys.delayed, keys.dead)


def worker_ini(directory: Path, queue: str, *, name: str = "worker.ini",
               results: str = "results.jsonl", concurrency: int = 10,
               url: str = REDIS_URL, task_timeout: float = 1,
               claim_idle_time: float = 36, shutdown_timeout: float = 10,
               max_attempts: int = 5, extra_consumer: str = "") -> Path:
    """A worker configuration on ``queue`` with quick polls and reconnections."""
    path = directory / name
    path.write_text(
        "[consumer]\n"
        f"concurrency = {concurrency}\n"
        f"task_timeout = {task_timeout}\n"
        f"shutdown_timeout = {shutdown_timeout}\n"
        "idle_poll_max = 0.2\n"
        "stats_interval = 60\n"
        f"{extra_consumer}"
        "[provider]\n"
        "type = redis\n"
        f"url = {url}\n"
        f"queue = {queue}\n"
        f"claim_idle_time = {claim_idle_time}\n"
        "poll_timeout = 0.5\n"
        "socket_timeout = 2\n"
        "reconnect_max = 1\n"
        "[retry]\n"
        f"max_attempts = {max_attempts}\n"
        "backoff_base = 0.05\n"
        "backoff_max = 0.2\n"
        "[results]\n"
        f"path = {results}\n"
        "[logging]\n"
        "level = INFO\n"
    )
    return path


def line_count(path: Path) -> int:
    """Complete lines so far; safe while a worker is still appending."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def stream_entries(stream: str) -> list[dict[str, str]]:
    """Every entry of a stream, fields decoded, oldest first."""
    with client() as connection:
        items: Any = connection.xrange(stream)
    return [{name.decode(): value.decode("utf-8", "replace") for name, value in fields.items()}
            for _, fields in items]


def queue_is_drained(queue: str) -> bool:
    """Nothing waiting, taken or delayed: every job was acknowledged or dead-lettered."""
    keys = Keys.for_queue(queue)
    with client() as connection:
        return connection.xlen(keys.stream) == 0 and connection.zcard(keys.delayed) == 0


def http_jobs(ids: list[str], url: str, **extra: Any) -> list[tuple[str, str, int]]:
    """Publisher messages for HTTP jobs: (id, payload, max_attempts)."""
    return [(job_id, json.dumps({"id": job_id, "url": url, **extra}), 5) for job_id in ids]


class EchoPromise(Promise):
    """A task that only counts its runs (and fails its first attempt if the job says
    ``fail_first``); for in-process provider tests."""

    runs: dict[str, int] = {}
    started: dict[str, list[float]] = {}

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job["id"])
        self.job = job

    def run(self) -> None:
        EchoPromise.runs[self.id] = EchoPromise.runs.get(self.id, 0) + 1
        EchoPromise.started.setdefault(self.id, []).append(time.monotonic())
        if self.job.get("fail_first") and self.attempt == 1:
            raise RetryLater("the first attempt fails", self.job.get("retry_delay", 0.05))


def echo_transformer(text: str) -> Promise:
    try:
        job = json.loads(text)
    except ValueError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(job, dict) or "id" not in job:
        raise ValueError("not a job object")
    return EchoPromise(job)


def capturing_logger(name: str) -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f"{name}-{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    return logger, handler
