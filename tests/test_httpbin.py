"""The HTTP promise against a third-party server: httpbin, run locally on loopback.

httpbin runs in a process of its own (``tests/httpbin_server.py``), under the
interpreter named by ``ASYNC_CONSUMER_HTTPBIN_PYTHON`` (``make test`` points it at
``.venv-httpbin``) or else the system one, which has Debian's ``python3-httpbin``.
Without it these tests are skipped, or fail when ``ASYNC_CONSUMER_REQUIRE_SERVICES=1``.

Every request goes through ``RequestsPromise`` and a real ``AsyncConsumer``.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import stop_process

import async_consumer
from async_consumer import AsyncConsumer, MemoryProvider, PromiseError, Status
from async_consumer.http import RequestFactory, RequestsPromise, ResponseHandler

SYSTEM_PYTHON = "/usr/bin/python3"
HTTPBIN_PYTHON = os.environ.get("ASYNC_CONSUMER_HTTPBIN_PYTHON") or SYSTEM_PYTHON
LAUNCHER = Path(__file__).resolve().with_name("httpbin_server.py")
START_SECONDS = 30.0
#: httpbin answers /bytes and /stream-bytes with at most this many bytes.
HTTPBIN_BYTES_LIMIT = 100 * 1024
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def unavailable(reason: str) -> None:
    if os.environ.get("ASYNC_CONSUMER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (and ASYNC_CONSUMER_REQUIRE_SERVICES=1 requires it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of an httpbin process on 127.0.0.1, stopped by its PID at the end."""
    clean_env = {key: value for key, value in os.environ.items()
                 if key not in ("PYTHONPATH", "PYTHONHOME")}
    if not os.access(HTTPBIN_PYTHON, os.X_OK):
        unavailable(f"{HTTPBIN_PYTHON} is missing, so httpbin cannot run")
    probe = subprocess.run([HTTPBIN_PYTHON, "-c", "import httpbin, werkzeug.serving"],
                           capture_output=True, text=True, timeout=60, env=clean_env)
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["no error text"])[-1]
        unavailable(f"{HTTPBIN_PYTHON} cannot import httpbin (install python3-httpbin, "
                    f"or run make test): {last_line}")

    directory = tmp_path_factory.mktemp("httpbin")
    port_file = directory / "port"
    log_path = directory / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([HTTPBIN_PYTHON, str(LAUNCHER), str(port_file)],
                                   stdout=log, stderr=log, env=clean_env)
    deadline = time.monotonic() + START_SECONDS
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            pytest.fail(f"httpbin did not start; its output:\n{log_path.read_text()}")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port_file.read_text()}"
    stop_process(process)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """``requests`` honours proxy variables; these tests talk to loopback only."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


class Build(RequestFactory):
    def __init__(self, method: str, url: str, **options: Any) -> None:
        self.method = method
        self.url = url
        self.options = options

    def create(self) -> requests.Request:
        return requests.Request(self.method, self.url, **self.options)


class Outcome(ResponseHandler):
    """Keeps what it was given and when, in seconds since it was made."""

    def __init__(self) -> None:
        self.zero = time.monotonic()
        self.responses: list[requests.Response] = []
        self.errors: list[PromiseError] = []
        self.seconds: float | None = None

    def on_success(self, response: requests.Response) -> None:
        self.responses.append(response)
        self.seconds = time.monotonic() - self.zero

    def on_exception(self, error: PromiseError) -> None:
        self.errors.append(error)
        self.seconds = time.monotonic() - self.zero


def send(method: str, url: str, *, timeout: Any = (2, 5), **options: Any
         ) -> tuple[Outcome, RequestsPromise]:
    """Run one request as a task of a real consumer; return its handler and promise."""
    handler = Outcome()
    promise = RequestsPromise(Build(method, url, **options), handler, timeout=timeout)
    consumer = AsyncConsumer(MemoryProvider([promise]), 1, 0.01, task_timeout=10,
                             shutdown_timeout=5, handle_signals=False)
    consumer.consume(until_empty=True)
    return handler, promise


@pytest.mark.parametrize("code", [200, 201, 204])
def test_a_success_status_from_httpbin_reaches_on_success(httpbin, code: int) -> None:
    handler, promise = send("GET", f"{httpbin}/status/{code}")

    assert handler.errors == []
    assert [response.status_code for response in handler.responses] == [code]
    assert promise.outcome is Status.OK


@pytest.mark.parametrize("code", [404, 418, 500, 503])
def test_an_error_status_from_httpbin_reaches_on_exception(httpbin, code: int) -> None:
    handler, promise = send("GET", f"{httpbin}/status/{code}")

    assert handler.responses == []
    [error] = handler.errors
    assert error.response is not None and error.response.status_code == code
    assert isinstance(error.__cause__, requests.HTTPError)
    assert promise.outcome is Status.FAILED


def test_three_redirects_are_followed_to_the_final_answer(httpbin) -> None:
    handler, _ = send("GET", f"{httpbin}/redirect/3")

    assert handler.errors == []
    [response] = handler.responses
    assert response.status_code == 200
    assert response.url == f"{httpbin}/get"
    assert [step.status_code for step in response.history] == [302, 302, 302]


def test_more_redirects_than_requests_allows_reach_on_exception(httpbin) -> None:
    handler, promise = send("GET", f"{httpbin}/redirect/40")

    assert handler.responses == []
    [error] = handler.errors
    assert isinstance(error.__cause__, requests.TooManyRedirects)
    assert promise.outcome is Status.FAILED


def test_a_slow_answer_ends_in_a_read_timeout_after_the_read_timeout(httpbin) -> None:
    handler, promise = send("GET", f"{httpbin}/delay/3", timeout=(2, 1))

    assert handler.responses == []
    [error] = handler.errors
    assert isinstance(error.__cause__, requests.exceptions.ReadTimeout)
    assert handler.seconds is not None and 0.8 <= handler.seconds <= 2.0, handler.seconds
    assert promise.outcome is Status.FAILED


def test_a_gzipped_answer_is_decoded(httpbin) -> None:
    handler, _ = send("GET", f"{httpbin}/gzip")

    [response] = handler.responses
    assert response.headers["Content-Encoding"] == "gzip"
    answer = response.json()
    assert answer["gzipped"] is True
    assert "gzip" in answer["headers"]["Accept-Encoding"]


def seeded_bytes(seed: int, count: int) -> bytes:
    """The bytes httpbin makes for ``?seed=SEED``: ``random.randint(0, 255)`` per byte."""
    generator = random.Random(seed)
    return bytes(generator.randint(0, 255) for _ in range(count))


def test_a_large_body_arrives_whole(httpbin) -> None:
    handler, _ = send("GET", f"{httpbin}/bytes/1048576?seed=7")

    [response] = handler.responses
    assert int(response.headers["Content-Length"]) == HTTPBIN_BYTES_LIMIT
    assert response.content == seeded_bytes(7, HTTPBIN_BYTES_LIMIT)


def test_a_large_chunked_body_arrives_whole(httpbin) -> None:
    handler, _ = send("GET", f"{httpbin}/stream-bytes/{HTTPBIN_BYTES_LIMIT}"
                      "?seed=9&chunk_size=3000")

    [response] = handler.responses
    assert "Content-Length" not in response.headers
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert response.content == seeded_bytes(9, HTTPBIN_BYTES_LIMIT)


def test_a_json_body_is_posted_and_echoed(httpbin) -> None:
    payload = {"order": 17, "items": ["tea", "scones"], "note": "caf\u00e9"}
    handler, _ = send("POST", f"{httpbin}/post", json=payload)

    [response] = handler.responses
    echoed = response.json()
    assert echoed["json"] == payload
    assert echoed["headers"]["Content-Type"] == "application/json"


def test_requests_carry_the_framework_user_agent(httpbin) -> None:
    handler, _ = send("GET", f"{httpbin}/headers")

    [response] = handler.responses
    agent = response.json()["headers"]["User-Agent"]
    assert agent == f"async-consumer/{async_consumer.__version__}"


def test_basic_auth_with_the_right_credentials_succeeds(httpbin) -> None:
    handler, _ = send("GET", f"{httpbin}/basic-auth/alice/open-sesame",
                      auth=("alice", "open-sesame"))

    assert handler.errors == []
    [response] = handler.responses
    assert response.json() == {"authenticated": True, "user": "alice"}


def test_basic_auth_with_the_wrong_password_reaches_on_exception_with_401(httpbin) -> None:
    handler, promise = send("GET", f"{httpbin}/basic-auth/alice/open-sesame",
                            auth=("alice", "guess"))

    assert handler.responses == []
    [error] = handler.errors
    assert error.response is not None and error.response.status_code == 401
    assert isinstance(error.__cause__, requests.HTTPError)
    assert promise.outcome is Status.FAILED
