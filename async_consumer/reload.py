"""Re-reading the INI file on SIGHUP, without dropping the work in flight.

Only settings that a running worker can take over safely change live: how many tasks
run at once, the log level and the progress interval. Every other change is logged
as needing a restart and left out, so that the settings in force are always the ones
the log says. A file that does not load is reported, every error of it as at start,
and the previous settings stay.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any

import gevent
from loguru import logger

from .config import Config, load_config
from .errors import ConfigError
from .systemd import Notifier

#: The settings a running worker applies at once, by (section, key).
LIVE_SETTINGS = (
    ("consumer", "concurrency"),
    ("consumer", "stats_interval"),
    ("logging", "level"),
)


class Reloader:
    """Applies a changed INI file to a running worker.

    ``configure_logging`` is called with the new ``[logging]`` section when the level
    changed; it is passed in so that this module does not decide how sinks are made.
    """

    def __init__(self, source: str, config: Config, consumer: Any,
                 configure_logging: Callable[[Config], None],
                 notifier: Notifier | None = None) -> None:
        self.source = source
        self.config = config
        self.consumer = consumer
        self.configure_logging = configure_logging
        self.notifier = notifier or Notifier({})
        self.reloads = 0

    def install(self) -> Any:
        """Reload on SIGHUP; returns the watcher, to cancel when the worker stops."""
        return gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))

    def reload(self) -> bool:
        """Load the file again and apply what may change live; ``False`` if refused."""
        self.notifier.notify("RELOADING=1")
        try:
            return self._reload()
        finally:
            self.notifier.ready(f"reloaded {self.source}")

    def _reload(self) -> bool:
        logger.info("SIGHUP: reloading {}", self.source)
        try:
            fresh = load_config(self.source)
        except ConfigError as error:
            logger.error("reload refused, the settings in force stay: {}", error)
            return False

        changes = _changes(self.config, fresh)
        if not changes:
            logger.info("reload: nothing changed")
            return True

        in_force = self.config
        for (section, key), (old, new) in changes.items():
            if (section, key) not in LIVE_SETTINGS:
                logger.warning("reload: [{}] {} changed from {} to {}, which needs a "
                               "restart; it stays {} until then", section, key,
                               _shown(key, old), _shown(key, new), _shown(key, old))
                continue
            in_force = _with(in_force, section, key, new)
            logger.info("reload: [{}] {} is now {} (was {})", section, key, new, old)

        self._apply(in_force)
        self.config = in_force
        self.reloads += 1
        return True

    def _apply(self, config: Config) -> None:
        consumer = self.consumer
        if config.consumer.concurrency != consumer.concurrency:
            consumer.set_concurrency(config.consumer.concurrency)
        if config.consumer.stats_interval != consumer.stats_interval:
            consumer.set_stats_interval(config.consumer.stats_interval)
        if config.logging.level != self.config.logging.level:
            self.configure_logging(config)
            consumer.refresh_log_level()


def _changes(old: Config, new: Config) -> dict[tuple[str, str], tuple[Any, Any]]:
    """Every setting whose value differs, by (section, key)."""
    changed = {}
    for section in (field.name for field in dataclasses.fields(Config)):
        if section == "source":
            continue
        before, after = getattr(old, section), getattr(new, section)
        for item in dataclasses.fields(before):
            was, now = getattr(before, item.name), getattr(after, item.name)
            if was != now:
                changed[(section, item.name)] = (was, now)
    return changed


def _with(config: Config, section: str, key: str, value: Any) -> Config:
    """``config`` with one setting replaced."""
    updated = dataclasses.replace(getattr(config, section), **{key: value})
    return dataclasses.replace(config, **{section: updated})


def _shown(key: str, value: Any) -> Any:
    """A value as the log may show it: secrets masked."""
    from .config import redact

    return redact(key, value) if isinstance(value, str) else value
