"""fan_out: concurrent requests from synchronous code, in processes that are not patched.

This test process is monkey-patched (conftest), so everything that must run without
patching runs in a process of its own: Gunicorn with its sync and gthread workers,
or a short script.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from gevent.pywsgi import WSGIServer

from conftest import REPO, Target, self_signed_certificate, wait_until
from flask_support import get, gunicorn

pytestmark = pytest.mark.slow

FAN_OUT_APP = '''
import threading
import time

import requests
from flask import Flask, jsonify, request
from gevent import monkey

from async_consumer.fanout import fan_out

app = Flask(__name__)


@app.get("/ping")
def ping():
    return "pong"


@app.get("/fan")
def fan():
    target = request.args["target"]
    started = time.monotonic()
    results = fan_out([requests.Request("GET", f"{target}/delay/500") for _ in range(20)],
                      deadline=8)
    return jsonify(seconds=time.monotonic() - started, ok=sum(r.ok for r in results),
                   errors=[repr(r.error) for r in results if not r.ok],
                   patched=monkey.is_module_patched("socket"),
                   thread=threading.current_thread().name)
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "fanapp.py").write_text(FAN_OUT_APP)
    return tmp_path


def test_a_sync_gunicorn_worker_fans_out_twenty_slow_calls_at_once(
    app_dir: Path, fresh_target: Target
) -> None:
    with gunicorn(app_dir, "fanapp:app", "--worker-class", "sync") as url:
        answer = json.loads(get(f"{url}/fan?target={fresh_target.url}"))

    assert answer["ok"] == 20, answer["errors"]
    assert answer["patched"] is False
    assert fresh_target.stats()["max_in_flight"] == 20
    # One after another would take 10 s.
    assert answer["seconds"] < 2.0, answer


def test_a_gevent_worker_fans_out_in_its_patched_process(
    app_dir: Path, fresh_target: Target
) -> None:
    with gunicorn(app_dir, "fanapp:app", "--worker-class", "gevent") as url:
        answer = json.loads(get(f"{url}/fan?target={fresh_target.url}"))

    assert answer["ok"] == 20, answer["errors"]
    assert answer["patched"] is True
    assert fresh_target.stats()["max_in_flight"] == 20


def test_a_gthread_worker_serves_other_requests_while_one_thread_fans_out(
    app_dir: Path, fresh_target: Target
) -> None:
    with gunicorn(app_dir, "fanapp:app", "--worker-class", "gthread", "--threads", "4") as url:
        fanning = gevent.spawn(get, f"{url}/fan?target={fresh_target.url}")
        wait_until(lambda: fresh_target.stats()["in_flight"] >= 10, "the fan-out to start")

        started = time.monotonic()
        pong = get(f"{url}/ping")
        ping_seconds = time.monotonic() - started
        answer = json.loads(fanning.get(timeout=30))

    assert pong == b"pong"
    assert ping_seconds < 0.2, ping_seconds
    assert answer["ok"] == 20, answer["errors"]
    assert answer["patched"] is False
    assert answer["thread"] != "MainThread"
    assert fresh_target.stats()["max_in_flight"] == 20
    assert answer["seconds"] < 2.0, answer


def run_unpatched(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that never monkey-patches."""
    prelude = ("from gevent import monkey\n"
               "assert not monkey.is_module_patched('socket')\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _tls_app(environ: dict, start_response) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        gevent.sleep(0.5)
    if environ["PATH_INFO"] == "/moved":
        start_response("302 Found", [("Location", "/"), ("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"secure"]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on loopback with a self-signed certificate, in this test's hub."""
    key, cert = self_signed_certificate(tmp_path)
    server = WSGIServer(("127.0.0.1", 0), _tls_app, keyfile=str(key), certfile=str(cert),
                        log=None, error_log=None)
    server.start()
    yield f"https://127.0.0.1:{server.server_port}", cert
    server.stop()


def test_https_fans_out_in_a_worker_thread_of_an_unpatched_process(
    tls_server: tuple[str, Path]
) -> None:
    url, cert = tls_server
    done = run_unpatched(f"""
        import threading, time
        import requests
        from async_consumer.fanout import fan_out
        from async_consumer.http import build_session

        def view():
            started = time.monotonic()
            verified = fan_out([requests.Request("GET", {url!r} + "/slow")] * 10,
                               session=build_session(verify={str(cert)!r}), deadline=10)
            refused = fan_out([requests.Request("GET", {url!r} + "/")], deadline=10)
            seconds = round(time.monotonic() - started, 2)
            print([r.response.text for r in verified if r.ok], seconds)
            print(type(refused[0].error.__cause__).__name__)

        thread = threading.Thread(target=view)
        thread.start()
        thread.join()
    """)

    assert done.returncode == 0, done.stderr
    texts, seconds = done.stdout.splitlines()[0].rsplit(" ", 1)
    assert texts == str(["secure"] * 10)
    assert float(seconds) < 4.0, done.stdout
    assert done.stdout.splitlines()[1] == "SSLError"


def test_the_deadline_reports_unfinished_requests_and_closes_their_sockets() -> None:
    done = run_unpatched("""
        import json, socket, threading, time
        import requests
        from async_consumer.fanout import fan_out

        # A server on a plain OS thread that never answers and counts closed connections.
        listener = socket.create_server(("127.0.0.1", 0))
        closed = []

        def serve():
            while True:
                connection, _ = listener.accept()
                threading.Thread(target=lambda c=connection: (c.recv(65536), c.recv(65536),
                                 closed.append(1)), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        url = "http://127.0.0.1:%d/" % listener.getsockname()[1]

        started = time.monotonic()
        results = fan_out([requests.Request("GET", url)] * 5, deadline=0.5)
        returned = time.monotonic() - started
        deadline = time.monotonic() + 5
        while len(closed) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(json.dumps({"returned": returned, "timed_out": [r.timed_out for r in results],
                          "closed": len(closed)}))
    """)

    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["timed_out"] == [True] * 5
    assert outcome["closed"] == 5
    assert outcome["returned"] < 2.0


def test_what_the_fast_transport_cannot_send_fails_clearly_without_patching(
    tls_server: tuple[str, Path]
) -> None:
    url, _ = tls_server
    done = run_unpatched(f"""
        import requests
        from async_consumer.fanout import fan_out
        from async_consumer.http import (
            RequestFactory, RequestsPromise, ResponseHandler, build_session)

        class Factory(RequestFactory):
            def create(self):
                return requests.Request("GET", {url!r})

        class Handler(ResponseHandler):
            def on_success(self, response): pass
            def on_exception(self, error): pass

        proxied = build_session(verify=False)
        proxied.proxies = {{"https": "http://127.0.0.1:9"}}
        proxied.trust_env = False
        result = fan_out([requests.Request("GET", {url!r})], session=proxied, deadline=5)[0]
        print("proxy:", result.error.__cause__)

        moved = fan_out([requests.Request("GET", {url!r} + "/moved")],
                        session=build_session(verify=False), deadline=5)[0]
        print("redirect:", type(moved.error.__cause__).__name__, moved.timed_out)

        try:
            fan_out([RequestsPromise(Factory(), Handler())])
        except ValueError as error:
            print("auto:", error)
    """)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("proxy: transport 'fast' cannot send this request: "
                               "a proxy is configured"), done.stdout
    assert lines[1] == "redirect: TooManyRedirects False", done.stdout
    assert lines[2].startswith("auto: the promises at positions [0]"), done.stdout
    assert "not monkey-patched" in lines[2]
