"""A small HTTP target for the demo and the tests, served on loopback.

It answers from gevent's own WSGI server, so it needs no monkey-patching and holds
thousands of open connections. It counts the requests it is serving at once, which
lets tests prove how many requests a consumer really keeps in flight.

Paths:
    /ok                      200 with a short body
    /delay/<ms>              waits, then 200
    /status/<code>           answers with that status
    /flaky/<key>/<n>         503 (Retry-After: 0) for the first n requests per key, then 200
    /hang                    accepts and never answers
    /bytes/<n>               n bytes of body
    /echo                    200 with the request's method, path, query, headers and body
    /stats                   JSON: total, in_flight, max_in_flight
    /stats/reset             zeroes the counters

Run: ``python -m async_consumer.devserver --port 0 --port-file PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

HANG_SECONDS = 3600.0
LISTEN_BACKLOG = 2048
#: Answers that must not carry a body.
BODILESS_STATUSES = ("204", "304")


class Target:
    """The WSGI application, with its counters."""

    def __init__(self) -> None:
        self.total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.flaky_seen: Counter[str] = Counter()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path.startswith("/stats"):
            return self._stats(path, start_response)

        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, headers, body = self._answer(path, environ)
        finally:
            self.in_flight -= 1
        if status[:3] in BODILESS_STATUSES:
            start_response(status, headers)
            return []
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [body]

    def _answer(self, path: str, environ: dict) -> tuple[str, list, bytes]:
        parts = [part for part in path.split("/") if part]
        name = parts[0] if parts else "ok"
        text = [("Content-Type", "text/plain")]

        if name == "ok":
            return "200 OK", text, b"ok\n"
        if name == "delay" and len(parts) == 2:
            gevent.sleep(int(parts[1]) / 1000)
            return "200 OK", text, b"ok\n"
        if name == "status" and len(parts) == 2:
            code = int(parts[1])
            return f"{code} STATUS {code}", text, f"status {code}\n".encode()
        if name == "flaky" and len(parts) == 3:
            return self._flaky(parts[1], int(parts[2]))
        if name == "hang":
            gevent.sleep(HANG_SECONDS)
        if name == "bytes" and len(parts) == 2:
            return "200 OK", [("Content-Type", "application/octet-stream")], b"x" * int(parts[1])
        if name == "echo":
            return "200 OK", [("Content-Type", "application/json")], _echo(environ)
        return "404 Not Found", text, b"no such path\n"

    def _flaky(self, key: str, failures: int) -> tuple[str, list, bytes]:
        self.flaky_seen[key] += 1
        if self.flaky_seen[key] <= failures:
            return "503 Service Unavailable", [("Retry-After", "0")], b"try again\n"
        return "200 OK", [("Content-Type", "text/plain")], b"ok\n"

    def _stats(self, path: str, start_response: Callable) -> Iterable[bytes]:
        if path == "/stats/reset":
            self.total = self.max_in_flight = 0
            self.flaky_seen.clear()
        body = json.dumps({
            "total": self.total,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def _echo(environ: dict) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    headers = {key[5:].replace("_", "-").title(): value
               for key, value in environ.items() if key.startswith("HTTP_")}
    return json.dumps({
        "method": environ["REQUEST_METHOD"],
        "path": environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING"),
        "headers": headers,
        "body": body.decode("utf-8", "replace"),
    }).encode()


class _NoDelayHandler(WSGIHandler):
    """Sends each answer at once on a kept-alive connection.

    pywsgi writes the head and the body in separate sends; with Nagle's algorithm on,
    the body then waits for the client's delayed ACK (about 40 ms on Linux) on every
    request after the first one of a connection.
    """

    def handle(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()


def serve(host: str = "127.0.0.1", port: int = 0) -> WSGIServer:
    """Start the target in this process's hub and return the running server."""
    server = WSGIServer((host, port), Target(), log=None, error_log=None,
                        backlog=LISTEN_BACKLOG, handler_class=_NoDelayHandler)
    server.start()
    return server


def start_process(directory: Path, start_seconds: float = 15.0) -> tuple[subprocess.Popen, str]:
    """Run the target in a process of its own; returns it and its base URL.

    A separate process keeps the target's CPU and event loop apart from the worker
    being measured. Raises ``RuntimeError`` if it is not listening within
    ``start_seconds``; the caller stops the process (by its PID) when done.
    """
    port_file = directory / f"target-{os.getpid()}-{time.monotonic_ns()}.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "async_consumer.devserver", "--port", "0",
         "--port-file", str(port_file)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + start_seconds
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            raise RuntimeError("the HTTP target did not start")
        time.sleep(0.02)
    return process, f"http://127.0.0.1:{port_file.read_text()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args(argv)

    server = serve(args.host, args.port)
    port = server.server_port
    if args.port_file:
        temporary = f"{args.port_file}.{os.getpid()}"
        with open(temporary, "w") as handle:
            handle.write(str(port))
        os.replace(temporary, args.port_file)
    print(f"target listening on http://{args.host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
