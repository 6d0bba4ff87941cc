"""Running a real worker for the daemon tests: its INI, its process, its notifications."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def scripted_ini(directory: Path, extra: str = "", provider: str = "") -> Path:
    """A worker INI on the scripted provider; ``extra`` adds sections."""
    path = directory / "worker.ini"
    path.write_text(
        "[consumer]\nconcurrency = 4\nidle_poll_max = 0.2\nshutdown_timeout = 5\n"
        "[provider]\ntype = daemon_provider:ScriptedProvider\n" + provider
        + "[logging]\nlevel = INFO\n" + extra
    )
    return path


def start_worker(ini: Path, env: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen:
    """``async-consumer run -c ini`` in its own process, stderr into ``log``."""
    environment = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    stderr = open(log or ini.with_suffix(".log"), "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "async_consumer", "run", "-c", str(ini)],
            cwd=ini.parent, env=environment, stdout=subprocess.PIPE, stderr=stderr,
        )
    finally:
        stderr.close()


def stop_worker(process: subprocess.Popen, seconds: float = 20) -> int:
    """SIGTERM, then wait; SIGKILL only if it never ends. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise


class NotifySocket:
    """The datagram socket systemd would listen on; keeps what arrives, with times."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.socket.bind(b"\0" + abstract.encode())
            self.name = "@" + abstract
        else:
            assert path is not None
            self.socket.bind(str(path))
            self.name = str(path)
        self.messages: list[tuple[float, str]] = []

    def receive(self, seconds: float) -> None:
        """Collect datagrams for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.socket.settimeout(remaining)
            try:
                data = self.socket.recv(4096)
            except (socket.timeout, TimeoutError):
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, line: str, seconds: float) -> float:
        """Receive until a datagram holds ``line``; its arrival time."""
        deadline = time.monotonic() + seconds
        while True:
            for at, message in self.messages:
                if line in message.splitlines():
                    return at
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line} within {seconds}s: {self.messages}")
            self.receive(0.2)

    def times_of(self, line: str) -> list[float]:
        return [at for at, message in self.messages if line in message.splitlines()]

    def close(self) -> None:
        self.socket.close()
