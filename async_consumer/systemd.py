"""The systemd notification protocol (``sd_notify``), without any dependency.

A service of ``Type=notify`` tells systemd that it is ready, what it is doing, that it
is still alive and that it is stopping, by sending short ``KEY=value`` datagrams to the
unix socket named in ``$NOTIFY_SOCKET``. A name starting with ``@`` is in the abstract
namespace. Outside systemd the variable is unset and every call here does nothing,
so the daemon behaves the same in a terminal.

The watchdog pings come from the consumer's own loop (see :class:`SystemdObserver`):
a loop that is stuck, or a hub that a task keeps busy, stops pinging, and systemd
restarts the worker after ``WatchdogSec``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

#: Ping this often within the watchdog period: systemd's own advice is half of it.
WATCHDOG_FRACTION = 0.5


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; a no-op when it is not set.

    Sending never raises: a lost notification must not stop the worker, and systemd
    notices a silent service through its own timeouts.
    """

    def __init__(self, environ: Any = None) -> None:
        environ = os.environ if environ is None else environ
        self.address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_seconds = _watchdog_seconds(environ)
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two pings, or ``None`` when no watchdog is asked for."""
        if self.watchdog_seconds is None:
            return None
        return self.watchdog_seconds * WATCHDOG_FRACTION

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; ``False`` if it could not be sent."""
        if self.address is None:
            return False

        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *_status(status))

    def status(self, status: str) -> bool:
        return self.notify(*_status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class SystemdObserver:
    """Reports a consumer's life to systemd: ready, progress, watchdog, stopping.

    The consumer calls :meth:`on_tick` from its loop a few times a second; pings and
    status lines are rate-limited here, so a tick costs a clock read and two
    comparisons.
    """

    #: Seconds between two STATUS= lines, which systemctl status shows.
    STATUS_EVERY_SECONDS = 5.0

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.pings = 0
        self._interval = notifier.watchdog_interval
        self._next_ping = 0.0
        self._next_status = 0.0

    def on_start(self, consumer: Any) -> None:
        self.notifier.ready(f"consuming from {consumer.provider.describe()}, "
                            f"concurrency {consumer.concurrency}")
        self._ping(time.monotonic())

    def on_tick(self, consumer: Any, now: float) -> None:
        if self._interval is not None and now >= self._next_ping:
            self._ping(now)
        if now >= self._next_status:
            self._next_status = now + self.STATUS_EVERY_SECONDS
            summary = consumer.stats.summary()
            self.notifier.status(
                f"{summary['finished']} done ({summary['ok']} ok, {summary['failed']} "
                f"failed, {summary['retried']} retried), {consumer.in_flight} in flight"
            )

    def on_stopping(self, consumer: Any, reason: str) -> None:
        self.notifier.stopping(f"stopping: {reason}")

    def on_stopped(self, consumer: Any) -> None:
        self.notifier.status("stopped")

    def _ping(self, now: float) -> None:
        if self._interval is None:
            return
        self._next_ping = now + self._interval
        if self.notifier.watchdog():
            self.pings += 1


def _status(status: str) -> tuple[str, ...]:
    """A STATUS= line; systemd takes one line, so newlines are flattened."""
    if not status:
        return ()
    return ("STATUS=" + " ".join(status.split()),)


def _socket_address(name: str) -> str | bytes | None:
    """The address to send to: a path, or a NUL-prefixed abstract name."""
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")
    if name.startswith("/"):
        return name
    return None


def _watchdog_seconds(environ: Any) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, if it is meant for this process.

    systemd sets ``$WATCHDOG_PID`` to the main process; a child that inherited the
    environment must not ping on the parent's behalf.
    """
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        microseconds = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if microseconds <= 0:
        return None
    return microseconds / 1_000_000
