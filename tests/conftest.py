"""Shared fixtures. The test process is monkey-patched first, as a worker would be."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from async_consumer.devserver import start_process  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROCESS_START_SECONDS = 15.0
POLL_SECONDS = 0.05


@dataclass
class Target:
    """A running ``async_consumer.devserver`` in its own process."""

    url: str
    process: subprocess.Popen

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as answer:
            return json.loads(answer.read())

    def reset(self) -> None:
        urllib.request.urlopen(f"{self.url}/stats/reset", timeout=5).read()


def start_target(tmp_dir: Path) -> Target:
    process, url = start_process(tmp_dir, PROCESS_START_SECONDS)
    return Target(url, process)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End a process this test suite started, by its PID."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One HTTP target for the whole session; call ``reset()`` before counting."""
    server = start_target(tmp_path_factory.mktemp("target"))
    yield server
    stop_process(server.process)


@pytest.fixture
def fresh_target(tmp_path: Path) -> Iterator[Target]:
    """A target of this test's own, for tests that count requests or connections."""
    server = start_target(tmp_path)
    yield server
    stop_process(server.process)


def cli(*args: str, cwd: Path, stdin: str | None = None, timeout: float = 120,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m async_consumer ARGS`` the way an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "async_consumer", *args],
        cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_ini(directory: Path, text: str, name: str = "worker.ini") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def require_service(name: str, port: int, host: str = "127.0.0.1") -> None:
    """Skip when a broker is not reachable, or fail when CI says it must be."""
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
        return
    except OSError as error:
        reason = f"{name} is not reachable on {host}:{port} ({error})"

    if os.environ.get("ASYNC_CONSUMER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; ASYNC_CONSUMER_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


@pytest.fixture
def rabbitmq() -> None:
    require_service("RabbitMQ", 5672)


@pytest.fixture
def redis_server() -> None:
    require_service("Redis", 6379)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, made with openssl; returns (key, cert)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return key, cert


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> float:
    """Poll ``condition``; fail the test after ``seconds``. Returns the time it took."""
    started = time.monotonic()
    deadline = started + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {seconds}s waiting for {what}")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


class ListHandler(logging.Handler):
    """A standard logging handler that keeps its records for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno == level]
