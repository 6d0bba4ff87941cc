"""A one-line progress bar for ``run --until-empty`` on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import gevent

BAR_WIDTH = 30
REFRESH_SECONDS = 0.5


class ProgressBar:
    """Redraws ``done/total`` with a rate, in a greenlet, until stopped.

    ``read`` returns (done, remaining); the total is their sum, so jobs enqueued
    during the run stretch the bar instead of overflowing it.
    """

    def __init__(self, read: Callable[[], tuple[int, int]], stream: TextIO = sys.stderr):
        self.read = read
        self.stream = stream
        self.started = time.monotonic()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._refresh)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _refresh(self) -> None:
        while True:
            self._draw()
            gevent.sleep(REFRESH_SECONDS)

    def _draw(self) -> None:
        try:
            done, remaining = self.read()
        except Exception:
            return

        total = max(done + remaining, 1)
        filled = int(BAR_WIDTH * done / total)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} jobs  {done / elapsed:,.0f}/s ")
        self.stream.flush()
