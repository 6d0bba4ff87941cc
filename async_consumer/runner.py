"""Builds the daemon's parts from a :class:`~async_consumer.config.Config`.

Kept apart from the command-line parsing so that tests and embedding code can build
exactly what ``async-consumer run`` builds.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from .backoff import Backoff
from .config import Config
from .consumer import TIMEOUT_HANDLER_GRACE_SECONDS, AsyncConsumer
from .errors import ConfigError
from .jobs import HttpJob
from .provider import Provider
from .results import ResultsFile
from .settings import import_provider_class
from .sqlite_provider import SQLiteProvider
from .sqlite_queue import SQLiteQueue

#: A lease must outlast the longest task by this much, or another worker could take
#: a job that is still running.
LEASE_MARGIN_SECONDS = 30.0


@dataclass
class Worker:
    """A consumer with the provider it reads from."""

    consumer: AsyncConsumer
    provider: Provider


def open_queue(config: Config) -> SQLiteQueue:
    """The queue file of a ``type = sqlite`` configuration."""
    if config.provider.type != "sqlite" or config.provider.path is None:
        raise ConfigError(
            "this command needs the embedded queue", source=config.source,
            section="provider", key="type", value=config.provider.type,
            expected="sqlite",
        )
    check_lease_time(config)
    try:
        return SQLiteQueue(config.provider.path,
                           lease_seconds=config.provider.lease_time or 300)
    except ConfigError as error:
        raise ConfigError(error.reason, source=config.source, section="provider", key="path",
                          value=str(config.provider.path), expected=error.expected)
    except sqlite3.DatabaseError as error:
        raise ConfigError(
            f"not a usable queue file: {error}", source=config.source, section="provider",
            key="path", value=str(config.provider.path),
            expected="a queue file made by async-consumer, or a path for a new one",
        )


def check_lease_time(config: Config) -> None:
    """A job must stay leased longer than the longest task."""
    if config.provider.lease_time is None:
        return
    lease_time = config.provider.lease_time
    needed = config.consumer.task_timeout + TIMEOUT_HANDLER_GRACE_SECONDS + LEASE_MARGIN_SECONDS
    if lease_time < needed:
        raise ConfigError(
            f"a lease must outlast [consumer] task_timeout ({config.consumer.task_timeout}s) "
            f"plus {TIMEOUT_HANDLER_GRACE_SECONDS + LEASE_MARGIN_SECONDS:g}s, or another "
            "worker could take a job that is still running",
            source=config.source, section="provider", key="lease_time", value=lease_time,
            expected=f"at least {needed:g} seconds",
        )


def build_worker(config: Config, logger: Any = None) -> Worker:
    """The consumer and provider ``async-consumer run`` uses."""
    provider = build_provider(config, logger)
    consumer = AsyncConsumer(
        provider,
        config.consumer.concurrency,
        config.consumer.max_batch_collect_time,
        logger,
        task_timeout=config.consumer.task_timeout,
        shutdown_timeout=config.consumer.shutdown_timeout,
        mode=config.consumer.mode,
        idle_poll_max=config.consumer.idle_poll_max,
        stats_interval=config.consumer.stats_interval,
    )
    return Worker(consumer, provider)


def build_provider(config: Config, logger: Any = None) -> Provider:
    if config.provider.type in ("rabbitmq", "redis"):
        return _build_broker_provider(config, logger)
    if config.provider.type != "sqlite":
        return _build_custom_provider(config)

    queue = open_queue(config)
    try:
        results = open_results(config)
    except BaseException:
        queue.close()
        raise

    return SQLiteProvider(
        queue,
        http_job_transformer(config),
        results=results,
        backoff=backoff_from(config),
        logger=logger,
    )


def backoff_from(config: Config) -> Backoff:
    return Backoff(config.retry.backoff_base, config.retry.backoff_max, config.retry.jitter)


def open_results(config: Config) -> ResultsFile:
    try:
        return ResultsFile(config.results.path, fsync=config.results.fsync)
    except OSError as error:
        raise ConfigError(str(error), source=config.source, section="results", key="path",
                          value=str(config.results.path), expected="a writable file path")


def _build_broker_provider(config: Config, logger: Any) -> Provider:
    """A RabbitMQ or Redis provider; their modules import their client library."""
    if config.provider.type == "rabbitmq":
        from .rabbitmq_provider import RabbitMQProvider as broker_class
    else:
        from .redis_provider import RedisProvider as broker_class  # type: ignore[assignment]

    check_claim_time(config)
    results = open_results(config)
    try:
        return broker_class.from_config(
            config, http_job_transformer(config), results=results,
            backoff=backoff_from(config), logger=logger,
        )
    except BaseException:
        results.close()
        raise


def check_claim_time(config: Config) -> None:
    """A message must stay with its worker longer than the longest task."""
    idle = config.provider.claim_idle_time
    needed = config.consumer.task_timeout + TIMEOUT_HANDLER_GRACE_SECONDS + LEASE_MARGIN_SECONDS
    if idle is not None and idle < needed:
        raise ConfigError(
            "another worker could claim a message whose task is still running",
            source=config.source, section="provider", key="claim_idle_time", value=idle,
            expected=f"at least {needed:g} seconds ([consumer] task_timeout plus "
            f"{TIMEOUT_HANDLER_GRACE_SECONDS + LEASE_MARGIN_SECONDS:g}s)",
        )


def http_job_transformer(config: Config) -> Any:
    """A transformer from HTTP job payloads to promises on one shared session."""
    from .http.job import HttpJobPromise
    from .http.session import build_session

    http = config.http
    session = build_session(
        pool_size=http.pool_size or config.consumer.concurrency,
        timeout=(http.connect_timeout, http.read_timeout),
        verify=str(http.verify) if not isinstance(http.verify, bool) else http.verify,
        user_agent=http.user_agent,
    )
    timeout = (http.connect_timeout, http.read_timeout)

    def transform(payload: str | bytes) -> HttpJobPromise:
        return HttpJobPromise(HttpJob.from_payload(payload), session, timeout,
                              raise_for_status=http.raise_for_status,
                              max_body_bytes=http.max_body_bytes or None,
                              transport=http.transport)

    return transform


def _build_custom_provider(config: Config) -> Provider:
    spec = config.provider.type
    try:
        factory = import_provider_class(spec)
        options = dict(config.provider.options)
        if hasattr(factory, "from_config"):
            provider = factory.from_config(options, config)
        else:
            provider = factory(**options)
    except Exception as error:
        raise ConfigError(
            f"could not create the provider: {type(error).__name__}: {error}",
            source=config.source, section="provider", key="type", value=spec,
            expected="a Provider class taking the [provider] options as keyword arguments",
        ) from error

    if not isinstance(provider, Provider):
        raise ConfigError(
            f"{spec} made a {type(provider).__name__}, which is not a Provider",
            source=config.source, section="provider", key="type", value=spec,
            expected="a subclass of async_consumer.Provider",
        )
    return provider
