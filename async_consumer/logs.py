"""One logging interface over loguru and the standard ``logging`` module.

Library code emits through :class:`Log` and never adds sinks: sinks are configured
by the command-line entry point (see ``logsetup``) or by the embedding application.
Messages use ``{}`` placeholders; arguments are formatted only when the level is on.
"""

from __future__ import annotations

import logging
from typing import Any

_STDLIB_LEVELS = {
    "TRACE": 5,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "SUCCESS": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


class Log:
    """Wraps a loguru logger or a ``logging.Logger`` behind one small API."""

    def __init__(self, target: Any = None) -> None:
        if target is None:
            # Imported here, not at module level: loguru pulls in ssl, and the CLI must
            # be able to import this package before it monkey-patches.
            from loguru import logger as target
        self._target = target
        self._is_stdlib = isinstance(target, (logging.Logger, logging.LoggerAdapter))

    def is_enabled(self, level: str) -> bool:
        """Whether a line at ``level`` reaches any sink.

        Hot paths ask once per run rather than building a line per task that no sink
        shows. A logger whose level cannot be read is taken to want everything.
        """
        number = _STDLIB_LEVELS[level]
        if self._is_stdlib:
            return bool(self._target.isEnabledFor(number))

        # loguru keeps the lowest level of all its sinks on its core.
        lowest = getattr(getattr(self._target, "_core", None), "min_level", None)
        if isinstance(lowest, (int, float)):
            return lowest <= number
        return True

    def debug(self, message: str, *args: Any) -> None:
        self._emit("DEBUG", message, args)

    def info(self, message: str, *args: Any) -> None:
        self._emit("INFO", message, args)

    def warning(self, message: str, *args: Any) -> None:
        self._emit("WARNING", message, args)

    def error(self, message: str, *args: Any) -> None:
        self._emit("ERROR", message, args)

    def exception(self, message: str, *args: Any) -> None:
        """Log at ERROR with the traceback of the exception being handled."""
        self._emit("ERROR", message, args, with_traceback=True)

    def _emit(
        self, level: str, message: str, args: tuple, with_traceback: bool = False
    ) -> None:
        if self._is_stdlib:
            self._emit_stdlib(level, message, args, with_traceback)
            return

        self._target.opt(depth=2, exception=with_traceback or None).log(level, message, *args)

    def _emit_stdlib(
        self, level: str, message: str, args: tuple, with_traceback: bool
    ) -> None:
        number = _STDLIB_LEVELS[level]
        if not self._target.isEnabledFor(number):
            return

        text = message.format(*args) if args else message
        self._target.log(number, text, exc_info=with_traceback, stacklevel=3)


def as_log(target: Any = None) -> Log:
    """Accept a :class:`Log`, a loguru logger, a ``logging.Logger`` or ``None``."""
    if isinstance(target, Log):
        return target
    return Log(target)
