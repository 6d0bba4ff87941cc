"""Reporting code that holds the event loop: the stack of whatever blocked the hub.

A handler that computes for seconds, or calls a blocking library that gevent did not
patch, freezes every task of the worker at once: timeouts stop firing and the
watchdog stops being pinged. gevent's monitor thread notices when the hub has not
switched greenlets for ``max_blocking_time``; this module turns its report into one
warning in the worker's log, with the stack that names the blocking function.

The monitor traces every greenlet switch, a small cost on every task, so it runs
only when ``[logging] block_report_seconds`` is above 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from loguru import logger


def start_block_report(seconds: float) -> Callable[[], None] | None:
    """Watch the hub from a native thread; returns how to stop, or ``None`` when off."""
    if seconds <= 0:
        return None

    import gevent
    from gevent import events
    from gevent._monitor import MonitorWarning

    gevent.config.monitor_thread = True
    gevent.config.max_blocking_time = seconds
    # The report goes to the log, in the log's format, rather than raw to stderr.
    gevent.config.print_blocking_reports = False
    events.subscribers.append(_report)
    hub = gevent.get_hub()
    with warnings.catch_warnings():
        # Memory monitoring, which wants psutil, is not used here.
        warnings.simplefilter("ignore", MonitorWarning)
        monitor = hub.start_periodic_monitoring_thread()
    logger.info("reporting any code that holds the event loop for more than {}s", seconds)

    def stop() -> None:
        if _report in events.subscribers:
            events.subscribers.remove(_report)
        if monitor is not None:
            monitor.kill()
        hub.periodic_monitoring_thread = None

    return stop


def _report(event: Any) -> None:
    """Called in the monitor's thread for every gevent event; logs the blocked ones."""
    from gevent.events import EventLoopBlocked

    if not isinstance(event, EventLoopBlocked):
        return
    logger.warning(
        "the event loop was held for more than {}s by {}; every task waited. "
        "Stacks at that moment:\n{}",
        event.blocking_time, event.greenlet, "\n".join(event.info),
    )
