"""Helpers for the Flask and fan-out tests: Gunicorn in its own process, on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import stop_process

GUNICORN_START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def gunicorn(app_dir: Path, app: str, *options: str, log_dir: Path | None = None
             ) -> Iterator[str]:
    """Serve ``app`` (``module:variable`` in ``app_dir``) with Gunicorn; yields its URL.

    Gunicorn is not told to patch anything: its sync and gthread workers run the
    application on plain OS threads, as a legacy deployment does.
    """
    port = free_port()
    log_path = (log_dir or app_dir) / f"gunicorn-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--chdir", str(app_dir), "--timeout", "60", *options, app],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/ping", process, log_path)
        yield url
    finally:
        stop_process(process)
        log.close()


def _wait_for(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + GUNICORN_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer {url}: {log.read_text()}")


def get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read()
