"""What ``async-consumer run`` adds around a consumer when it runs as a daemon.

systemd notifications, the metrics and health endpoint, reloading on SIGHUP and the
blocked-hub report are each optional and independent; this module starts the ones the
configuration and the environment ask for, and stops them once the consumer is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from loguru import logger

from .blocking import start_block_report
from .config import Config
from .logsetup import configure_logging
from .reload import Reloader
from .systemd import Notifier, SystemdObserver


class Services:
    """The running extras of one worker; :meth:`stop` ends them in reverse order."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def on_stop(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def stop(self) -> None:
        while self._stops:
            self._stops.pop()()


def start_services(config: Config, worker: Any, source: str) -> Services:
    """Attach every extra the configuration and environment ask for to ``worker``."""
    services = Services()

    notifier = Notifier()
    if notifier.enabled:
        worker.consumer.observers.append(SystemdObserver(notifier))
        services.on_stop(notifier.close)

    reloader = Reloader(source, config, worker.consumer, apply_logging, notifier)
    if threading.current_thread() is threading.main_thread():
        services.on_stop(reloader.install().cancel)

    stop_block_report = start_block_report(config.logging.block_report_seconds)
    if stop_block_report is not None:
        services.on_stop(stop_block_report)

    if config.metrics.enabled:
        _start_metrics(config, worker, services)
    return services


def _start_metrics(config: Config, worker: Any, services: Services) -> None:
    """Listen before the consumer starts, so that a busy port fails the start at once."""
    from .errors import ConfigError
    from .metrics import MetricsServer

    metrics = config.metrics
    server = MetricsServer(worker.consumer, metrics.host, metrics.port, metrics.top_hosts)
    try:
        server.start()
    except OSError as error:
        raise ConfigError(f"cannot listen: {error.strerror or error}", source=config.source,
                          section="metrics", key="port", value=metrics.port,
                          expected="a free port on [metrics] host") from error
    host, port = server.address
    logger.info("metrics on http://{}:{}/metrics (health: /healthz, /readyz)", host, port)
    services.on_stop(server.stop)


def apply_logging(config: Config) -> None:
    """Install the log sink ``config`` asks for; used at start and on reload."""
    logging = config.logging
    configure_logging(logging.level, logging.format,
                      None if logging.file is None else str(logging.file), logging.enqueue)
