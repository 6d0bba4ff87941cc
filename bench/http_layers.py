"""CPU per request of each layer of the HTTP promise, one request at a time.

Sends GETs one after another to a local server and prints the CPU microseconds per
request of: geventhttpclient alone, the fast transport's ``send``, request
preparation plus ``send``, the whole ``RequestsPromise.run`` on each transport, and
requests' own ``Session.prepare_request`` next to the promise's ``prepare``. One
request at a time keeps the figures free of scheduling noise; the concurrent figures
are the suite's HTTP scenario.

    python -m bench.http_layers http://127.0.0.1:PORT/ [--requests 5000]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import requests  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402

from async_consumer.http import RequestFactory, RequestsPromise, ResponseHandler  # noqa: E402
from async_consumer.http.preparation import prepare  # noqa: E402
from async_consumer.http.session import build_session  # noqa: E402
from async_consumer.http.transport import FastTransport  # noqa: E402

TIMEOUT = (5.0, 30.0)


class _Get(RequestFactory):
    def __init__(self, url: str) -> None:
        self.url = url

    def create(self) -> requests.Request:
        return requests.Request("GET", self.url)


class _Ignore(ResponseHandler):
    def on_success(self, response: requests.Response) -> None:
        pass

    def on_exception(self, error: Exception) -> None:  # type: ignore[override]
        raise error


def cpu_microseconds(action: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        action()
    return (time.process_time() - started) / count * 1e6


def measure(url: str, count: int) -> dict[str, float]:
    parts = urlsplit(url)
    raw_client = HTTPClient(parts.hostname or "127.0.0.1", parts.port, concurrency=1)
    session = build_session()
    transport = FastTransport(10)
    prepared = prepare(session, requests.Request("GET", url))

    def raw() -> None:
        raw_client.get(parts.path or "/").read()

    def promise(name: str) -> Callable[[], None]:
        return lambda: RequestsPromise(_Get(url), _Ignore(), session=session,
                                       transport=name).run()

    return {
        "geventhttpclient alone": cpu_microseconds(raw, count),
        "fast transport send": cpu_microseconds(
            lambda: transport.send(session, prepared, TIMEOUT, None), count),
        "prepare + fast send": cpu_microseconds(
            lambda: transport.send(session, prepare(session, requests.Request("GET", url)),
                                   TIMEOUT, None), count),
        "promise, transport fast": cpu_microseconds(promise("fast"), count),
        "promise, transport requests": cpu_microseconds(promise("requests"), count),
        "Session.prepare_request": cpu_microseconds(
            lambda: session.prepare_request(requests.Request("GET", url)), count),
        "the promise's prepare": cpu_microseconds(
            lambda: prepare(session, requests.Request("GET", url)), count),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=5000)
    arguments = parser.parse_args()

    for name, microseconds in measure(arguments.url, arguments.requests).items():
        print(f"{name:32} {microseconds:8.1f} µs CPU per request")


if __name__ == "__main__":
    main()
