"""Cases found by trying to break the main job: TLS settings, huge bodies, stuck name
lookups, stray timeouts, lost deliveries and hostile job files."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import _socket
import gevent
import pytest
import requests
from gevent import monkey
from gevent.pywsgi import WSGIServer
from loguru import logger as loguru_logger

from async_consumer import AsyncConsumer, MemoryProvider, Promise, Status
from async_consumer.backoff import Backoff
from async_consumer.http import RequestFactory, RequestsPromise, ResponseHandler, build_session
from async_consumer.http.errors import is_transient
from async_consumer.http.promise import BodyTooLarge
from async_consumer.sqlite_provider import SQLiteProvider
from async_consumer.sqlite_queue import SQLiteQueue
from conftest import cli, read_results, self_signed_certificate, write_ini

real_sleep = monkey.get_original("time", "sleep")


class Get(RequestFactory):
    def __init__(self, url: str) -> None:
        self.url = url

    def create(self) -> requests.Request:
        return requests.Request("GET", self.url)


class Outcomes(ResponseHandler):
    def __init__(self) -> None:
        self.responses: list[requests.Response] = []
        self.errors: list = []

    def on_success(self, response: requests.Response) -> None:
        self.responses.append(response)

    def on_exception(self, error) -> None:
        self.errors.append(error)


def run_all(promises, concurrency=10, **options):
    provider = MemoryProvider(promises)
    AsyncConsumer(provider, concurrency, 0.0, handle_signals=False, **options).consume(
        until_empty=True
    )
    return provider


# -- TLS -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_target(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate of its own."""
    key, cert = self_signed_certificate(tmp_path_factory.mktemp("tls"))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "3")])
        return [b"ok\n"]

    server = WSGIServer(("127.0.0.1", 0), app, keyfile=str(key), certfile=str(cert),
                        log=None, error_log=None)
    server.start()
    yield f"https://127.0.0.1:{server.server_port}/", cert
    server.stop()


@pytest.mark.parametrize("verify, succeeds", [(True, False), ("ca", True), (False, True)])
def test_the_configured_tls_verification_wins_over_ca_bundle_variables(
    tls_target, monkeypatch, verify, succeeds
):
    url, cert = tls_target
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    session = build_session(verify=str(cert) if verify == "ca" else verify)
    handler = Outcomes()

    run_all([RequestsPromise(Get(url), handler, session=session)])

    assert bool(handler.responses) is succeeds
    if not succeeds:
        error = handler.errors[0]
        assert isinstance(error.__cause__, requests.exceptions.SSLError)
        assert not is_transient(error), "a certificate failure is retried in vain"


# -- bodies ----------------------------------------------------------------------------

def test_a_body_over_max_body_bytes_fails_the_request_instead_of_filling_memory(target):
    small, large = Outcomes(), Outcomes()

    run_all([
        RequestsPromise(Get(f"{target.url}/bytes/900"), small, max_body_bytes=1000),
        RequestsPromise(Get(f"{target.url}/bytes/5000"), large, max_body_bytes=1000),
    ])

    assert len(small.responses[0].content) == 900
    assert isinstance(large.errors[0], BodyTooLarge)
    assert "max_body_bytes (1000 bytes)" in str(large.errors[0])
    assert not is_transient(large.errors[0])


@pytest.fixture
def closes_mid_body():
    """A server that promises 1000 bytes, sends 10 and closes the connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve():
        while True:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            connection.close()

    serving = gevent.spawn(serve)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    serving.kill()
    listener.close()


def test_a_connection_closed_in_the_middle_of_a_body_is_retried(closes_mid_body):
    handler = Outcomes()

    run_all([RequestsPromise(Get(closes_mid_body), handler)])

    error = handler.errors[0]
    assert isinstance(error.__cause__, requests.exceptions.ChunkedEncodingError)
    assert is_transient(error)


# -- name resolution -------------------------------------------------------------------

@pytest.fixture
def slow_names(monkeypatch):
    """Lookups of names starting with "slow" block a resolver thread for 5 s."""
    real = _socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if isinstance(host, str) and host.startswith("slow"):
            real_sleep(5)
            raise _socket.gaierror(socket.EAI_NONAME, "no such name")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(_socket, "getaddrinfo", lookup)


def test_stuck_name_lookups_do_not_starve_the_other_tasks_of_resolver_threads(
    target, slow_names
):
    stuck, fast = Outcomes(), Outcomes()
    promises = [RequestsPromise(Get(f"http://slow{n}.test/"), stuck) for n in range(20)]
    promises += [RequestsPromise(Get(f"{target.url}/delay/100"), fast) for _ in range(30)]

    started = time.monotonic()
    run_all(promises, concurrency=60, task_timeout=3)

    assert len(fast.responses) == 30, [str(error) for error in fast.errors[:3]]
    assert len(stuck.errors) == 20
    assert time.monotonic() - started < 10


# -- the consumer ----------------------------------------------------------------------

def test_a_gevent_timeout_of_the_task_s_own_is_an_error_not_a_lost_task(capfd):
    class OwnTimeout(Promise):
        def run(self):
            with gevent.Timeout(0.05):
                gevent.sleep(1)

    records = []
    sink = loguru_logger.add(records.append, level="ERROR")
    try:
        provider = run_all([OwnTimeout()])
    finally:
        loguru_logger.remove(sink)

    assert [p.outcome for p in provider.settled] == [Status.ERROR]
    assert len(records) == 1 and "gevent.Timeout of its own" in str(records[0])
    assert "failed with Timeout" not in capfd.readouterr().err


def test_retry_after_is_honoured_up_to_the_backoff_maximum():
    backoff = Backoff(base=1, maximum=30, jitter=0)

    assert backoff.delay(1, requested=12) == 12
    assert backoff.delay(1, requested=100_000) == 30


def test_the_task_description_in_logs_never_shows_a_password(target):
    port = target.url.rsplit(":", 1)[1]
    promise = RequestsPromise(Get(f"http://alice:s3cr3t@127.0.0.1:{port}/ok"), Outcomes())

    run_all([promise])

    assert "s3cr3t" not in promise.describe()
    assert promise.describe() == f"GET 127.0.0.1:{port}"


def test_a_job_whose_worker_died_on_its_last_attempt_still_runs_again(tmp_path, target):
    path = tmp_path / "queue.sqlite3"
    dying = SQLiteQueue(path, lease_seconds=0.2)
    dying.put_many([("last-chance", json.dumps({"url": f"{target.url}/ok"}), 1)])
    assert dying.claim(1)[0].attempt == 1
    time.sleep(0.3)

    from async_consumer.config import Config
    from async_consumer.runner import http_job_transformer

    survivor = SQLiteProvider(SQLiteQueue(path), http_job_transformer(Config()))
    AsyncConsumer(survivor, 2, 0.0, handle_signals=False).consume(until_empty=True)

    assert survivor.counts.ok == 1
    dying.close()


# -- hostile job files -----------------------------------------------------------------

INI = "[provider]\npath = queue.sqlite3\n[results]\npath = results.jsonl\n"


@pytest.mark.parametrize("line, reason", [
    (b'\xff\xfe{"url": "http://127.0.0.1/"}', "not UTF-8 text"),
    (b'{"url": "http://[::1"}', "not a valid address"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"url": "http://127.0.0.1:99999/"}', "not a valid address"),
    (b'{"url": "http://bad host/"}', "spaces or control characters"),
    (b'{"url": "http://127.0.0.1/", "headers": {"X": "a\\r\\nX-Injected: 1"}}',
     "line break or control character"),
    (b'{"url": "http://127.0.0.1/", "headers": {"Bad Name": "a"}}', "not a valid HTTP token"),
    (b'{"url": "http://127.0.0.1/", "json": {"x": NaN}}', "NaN is not valid JSON"),
    (b'{"url": "http://127.0.0.1/", "params": {"a": {"b": 1}}}', "'params' must be"),
    (b'{"url": "http://127.0.0.1/", "timeout": 1e300}', "'timeout' must be seconds"),
])
def test_a_hostile_job_line_is_reported_with_its_number_and_nothing_is_stored(
    tmp_path: Path, line: bytes, reason: str
):
    write_ini(tmp_path, INI)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"url": "http://127.0.0.1/ok"}\n' + line + b"\n")

    result = cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path)

    assert result.returncode == 1
    assert "line 2: " in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    stored = sqlite3.connect(tmp_path / "queue.sqlite3").execute(
        "SELECT COUNT(*) FROM jobs").fetchone()[0] if (tmp_path / "queue.sqlite3").exists() else 0
    assert stored == 0


def test_bom_crlf_and_unicode_line_separators_inside_strings_are_read_as_one_job_each(
    tmp_path: Path, target
):
    write_ini(tmp_path, INI)
    lines = [
        json.dumps({"id": "sep", "url": f"{target.url}/ok", "json": {"t": "a\u2028b\u0085c"}},
                   ensure_ascii=False),
        json.dumps({"id": "crlf", "url": f"{target.url}/ok"}),
    ]
    (tmp_path / "jobs.jsonl").write_bytes(
        b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n"
    )

    enqueued = cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path)
    ran = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path)

    assert "accepted 2 job(s)" in enqueued.stdout, enqueued.stderr
    assert ran.returncode == 0
    assert sorted(r["id"] for r in read_results(tmp_path / "results.jsonl")) == ["crlf", "sep"]


def test_dead_requeue_takes_its_options_before_or_after_the_refs(tmp_path: Path, target):
    write_ini(tmp_path, INI + "[retry]\nbackoff_base = 0.01\nbackoff_max = 0.02\n")
    job = json.dumps({"id": "gone", "url": f"{target.url}/status/503", "max_attempts": 1})
    cli("enqueue", "-c", "worker.ini", "-", stdin=job, cwd=tmp_path)
    cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path)
    ref = json.loads(cli("dead", "list", "-c", "worker.ini", cwd=tmp_path).stdout)["ref"]

    moved = cli("dead", "requeue", "-c", "worker.ini", ref, cwd=tmp_path)

    assert moved.returncode == 0, moved.stderr
    assert "requeued 1 job(s)" in moved.stdout


def test_a_retry_starts_when_its_delay_ends_not_up_to_a_poll_interval_later(tmp_path, target):
    from async_consumer.config import Config
    from async_consumer.runner import http_job_transformer

    queue = SQLiteQueue(tmp_path / "queue.sqlite3")
    queue.put_many([("busy", json.dumps({"url": f"{target.url}/status/503"}), 3)])
    provider = SQLiteProvider(queue, http_job_transformer(Config()),
                              backoff=Backoff(base=0.7, maximum=0.7, jitter=0))
    consumer = AsyncConsumer(provider, 2, 0.0, idle_poll_max=5.0, handle_signals=False)

    started = time.monotonic()
    consumer.consume(until_empty=True)
    elapsed = time.monotonic() - started

    assert provider.counts.retried == 2 and provider.counts.dead_lettered == 1
    # two retries due 0.7 s apart: 1.4 s; a doubling idle pause overshoots each by ~0.6 s
    assert 1.35 < elapsed < 1.9, elapsed
