"""Log sinks for the command-line entry point; library code never calls this.

Every line goes through :class:`~async_consumer.redaction.RedactingStream`, so that a
password in a URL or a token in a header never reaches the log. Besides adding the
loguru sink, it routes the standard ``logging`` records of
``requests``/``urllib3`` (such as "Connection pool is full") into the same sink, so
that an operator reads one log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

from .redaction import RedactingStream

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "{process} | <level>{message}</level>"
)


class _IntoLoguru(logging.Handler):
    """Passes standard ``logging`` records to loguru, keeping their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: Any = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(
            level, "{}: {}", record.name, record.getMessage()
        )


def configure_logging(
    level: str = "INFO", fmt: str = "text", file: str | None = None, enqueue: bool = False
) -> list[str]:
    """Install the one sink; returns warnings about settings that were overridden.

    ``enqueue`` is refused when threads are monkey-patched: loguru's queue then
    mixes a greenlet writer with blocking pipe I/O and can stall every logging call.
    """
    notes = []
    if enqueue and _threads_are_patched():
        enqueue = False
        notes.append("[logging] enqueue = true was overridden to false: loguru's "
                     "background queue can hang once gevent has patched threads")

    logger.remove()
    if file:
        sink = RedactingStream(open(file, "a", encoding="utf-8", buffering=1),
                               close_target=True)
    else:
        sink = RedactingStream(sys.stderr)
    options: dict[str, Any] = {"level": level, "enqueue": enqueue, "backtrace": False}
    if fmt == "json":
        options["serialize"] = True
    else:
        options["format"] = TEXT_FORMAT
        options["colorize"] = None if not file else False
    logger.add(sink, **options)

    logging.basicConfig(handlers=[_IntoLoguru()], level=logging.WARNING, force=True)
    for note in notes:
        logger.warning(note)
    return notes


def _threads_are_patched() -> bool:
    from gevent import monkey

    return monkey.is_module_patched("threading")
