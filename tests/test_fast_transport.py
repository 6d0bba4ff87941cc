"""The fast transport against real servers on loopback, side by side with requests.

Most tests send the same request with ``transport="fast"`` and ``"requests"`` and
check that factories and handlers cannot tell the difference: same prepared request,
same bytes on the wire, same response fields, same kind of error. The servers run in
this process (a gevent WSGI app, or raw sockets where a test needs a server that
misbehaves).
"""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from async_consumer import PromiseError
from async_consumer.http import RequestFactory, RequestsPromise, ResponseHandler, is_transient
from async_consumer.http.preparation import prepare
from async_consumer.http.session import build_session
from async_consumer.http.transport import UnsupportedRequest
from conftest import self_signed_certificate

TRANSPORTS = ("fast", "requests")
BIG_BODY_BYTES = 200_000


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# -- servers -------------------------------------------------------------------------

def _app(environ: dict, start_response: Callable) -> list[bytes]:
    path = environ["PATH_INFO"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if path == "/echo":
        seen = {
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "query": environ.get("QUERY_STRING", ""),
            "headers": {key[5:]: value for key, value in environ.items()
                        if key.startswith("HTTP_")},
            "content_type": environ.get("CONTENT_TYPE", ""),
            "content_length": environ.get("CONTENT_LENGTH", ""),
            "body": body.decode("latin-1"),
            "port": environ["REMOTE_PORT"],
        }
        return _answer(start_response, "200 OK", json.dumps(seen).encode(),
                       [("Content-Type", "application/json")])
    if path == "/gzip":
        return _answer(start_response, "200 OK", gzip.compress(b"zipped " * 100),
                       [("Content-Encoding", "gzip"), ("Content-Type", "text/plain")])
    if path == "/deflate":
        return _answer(start_response, "200 OK", zlib.compress(b"deflated " * 100),
                       [("Content-Encoding", "deflate")])
    if path == "/bomb":
        return _answer(start_response, "200 OK", gzip.compress(b"\0" * BIG_BODY_BYTES),
                       [("Content-Encoding", "gzip")])
    if path == "/bad-gzip":
        return _answer(start_response, "200 OK", b"this is not gzip",
                       [("Content-Encoding", "gzip")])
    if path == "/latin1":
        return _answer(start_response, "200 OK", "café".encode("latin-1"),
                       [("Content-Type", "text/plain; charset=ISO-8859-1")])
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"one,", b"two,", b"three"]
    if path == "/cookie":
        return _answer(start_response, "200 OK", b"set", [
            ("Set-Cookie", "session=abc; Path=/"), ("Set-Cookie", "theme=dark; Path=/"),
        ])
    if path == "/repeated":
        return _answer(start_response, "200 OK", b"", [("X-Many", "a"), ("X-Many", "b")])
    if path == "/redirect":
        return _answer(start_response, "302 Found", b"", [
            ("Location", "/echo"), ("Set-Cookie", "hop=1; Path=/"),
        ])
    if path == "/hop":
        return _answer(start_response, "301 Moved Permanently", b"", [("Location", "/gzip")])
    if path == "/missing":
        return _answer(start_response, "404 Not Found", b"no such thing", [])
    if path == "/busy":
        return _answer(start_response, "503 Service Unavailable", b"later",
                       [("Retry-After", "7")])
    if path == "/slow":
        gevent.sleep(2)
        return _answer(start_response, "200 OK", b"late", [])
    if path == "/big":
        return _answer(start_response, "200 OK", b"x" * BIG_BODY_BYTES, [])
    return _answer(start_response, "200 OK", b"ok", [])


def _answer(start_response: Callable, status: str, body: bytes,
            headers: list[tuple[str, str]]) -> list[bytes]:
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    wsgi = WSGIServer(("127.0.0.1", 0), _app, log=None, error_log=None)
    wsgi.start()
    yield f"http://127.0.0.1:{wsgi.server_port}"
    wsgi.stop()


def _raw_server(handle: Callable[[socket.socket], None]) -> StreamServer:
    def serve(connection: socket.socket, address: Any) -> None:
        try:
            handle(connection)
        finally:
            connection.close()

    stream = StreamServer(("127.0.0.1", 0), serve)
    stream.start()
    return stream


def _read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        block = connection.recv(4096)
        if not block:
            return data
        data += block
    return data


# -- sending -------------------------------------------------------------------------

class Factory(RequestFactory):
    def __init__(self, request: requests.Request) -> None:
        self.request = request

    def create(self) -> requests.Request:
        return self.request


class Outcome(ResponseHandler):
    def __init__(self) -> None:
        self.response: requests.Response | None = None
        self.error: PromiseError | None = None

    def on_success(self, response: requests.Response) -> None:
        self.response = response
        self.text = response.text

    def on_exception(self, error: PromiseError) -> None:
        self.error = error


def send(transport: str, request: requests.Request, session: requests.Session | None = None,
         **options: Any) -> Outcome:
    outcome = Outcome()
    promise = RequestsPromise(Factory(request), outcome, session=session or build_session(),
                              transport=transport, **options)
    promise.run()
    return outcome


def both(request_for: Callable[[], requests.Request], **options: Any) -> dict[str, Outcome]:
    return {name: send(name, request_for(), **options) for name in TRANSPORTS}


def same_response(outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The fields a handler reads, checked equal across transports; the fast ones."""
    seen = {}
    for name, outcome in outcomes.items():
        response = outcome.response
        assert response is not None, (name, outcome.error)
        assert isinstance(response, requests.Response)
        headers = {key.lower(): value for key, value in response.headers.items()
                   if key.lower() not in ("date", "server")}
        seen[name] = dict(
            status=response.status_code, reason=response.reason, url=response.url,
            headers=headers, content=response.content, encoding=response.encoding,
            text=response.text, ok=response.ok, history=len(response.history),
            cookies=dict(response.cookies), method=response.request.method,
        )
    assert seen["fast"] == seen["requests"]
    return seen["fast"]


# -- preparing -----------------------------------------------------------------------

REQUEST_SHAPES = [
    dict(method="GET", url="http://127.0.0.1:8/"),
    dict(method="get", url="http://127.0.0.1:8"),
    dict(method="GET", url="http://127.0.0.1:8/a b/ç?x=1&y=é#frag"),
    dict(method="GET", url="http://127.0.0.1:8/p?x=1", params={"y": "2", "z": ["3", "4"]}),
    dict(method="GET", url="http://127.0.0.1:8/p", params=[("a", "1"), ("a", "2")]),
    dict(method="GET", url="http://EXAMPLE.test:80/p", headers={"user-agent": "mine/1"}),
    dict(method="GET", url="http://x.test/", headers={"Accept-Encoding": None, "X-A": "1"}),
    dict(method="POST", url="http://x.test/", json={"a": [1, 2], "b": "ü"}),
    dict(method="POST", url="http://x.test/", json=None),
    dict(method="POST", url="http://x.test/", data="text body"),
    dict(method="POST", url="http://x.test/", data=b"\x00\x01bytes"),
    dict(method="POST", url="http://x.test/", data="", headers={"Content-Type": "x/y"}),
    dict(method="PUT", url="http://x.test/"),
    dict(method="DELETE", url="http://x.test/item/1"),
    dict(method="HEAD", url="http://x.test/"),
    dict(method="POST", url="http://x.test/", data={"form": "field"}),
    dict(method="GET", url="http://user:secret@x.test/"),
    dict(method="GET", url="http://x.test/", auth=("user", "secret")),
    dict(method="GET", url="http://x.test/", cookies={"c": "1"}),
]


@pytest.mark.parametrize("shape", REQUEST_SHAPES, ids=lambda shape: repr(shape)[:60])
def test_a_request_is_prepared_exactly_as_the_session_would(shape: dict) -> None:
    session = build_session()
    session.headers["X-Session"] = "kept"

    ours = prepare(session, requests.Request(**shape))
    theirs = session.prepare_request(requests.Request(**shape))

    assert (ours.method, ours.url, ours.body) == (theirs.method, theirs.url, theirs.body)
    assert list(ours.headers.items()) == list(theirs.headers.items())


def test_session_params_and_changed_session_headers_are_followed() -> None:
    session = build_session()
    session.params = {"key": "v"}
    first = prepare(session, requests.Request("GET", "http://x.test/", params={"q": 1}))
    session.headers["X-Later"] = "added"
    second = prepare(session, requests.Request("GET", "http://x.test/"))

    assert first.url == "http://x.test/?key=v&q=1"
    assert second.headers["X-Later"] == "added"
    assert second.url == session.prepare_request(requests.Request("GET", "http://x.test/")).url


def test_a_request_with_a_bad_header_is_refused_as_requests_does() -> None:
    session = build_session()
    bad = requests.Request("GET", "http://x.test/", headers={"X-Bad": "a\r\nInjected: 1"})

    with pytest.raises(requests.exceptions.InvalidHeader):
        prepare(session, bad)


# -- the same answers ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ok", "/gzip", "/deflate", "/chunked", "/latin1",
                                  "/cookie", "/repeated", "/hop", "/big"])
def test_both_transports_give_the_handler_the_same_response(server: str, path: str) -> None:
    fields = same_response(both(lambda: requests.Request("GET", server + path)))

    if path == "/gzip":
        assert fields["content"] == b"zipped " * 100
    if path == "/chunked":
        assert fields["content"] == b"one,two,three"
    if path == "/latin1":
        assert fields["text"] == "café"
    if path == "/cookie":
        assert fields["cookies"] == {"session": "abc", "theme": "dark"}
    if path == "/repeated":
        assert fields["headers"]["x-many"] == "a, b"
    if path == "/hop":
        assert fields["history"] == 1 and fields["url"].endswith("/gzip")


@pytest.mark.parametrize("shape", [
    dict(method="GET", url="/echo?x=1", params={"y": "é"}),
    dict(method="POST", url="/echo", json={"a": 1}),
    dict(method="POST", url="/echo", data="plain text"),
    dict(method="PUT", url="/echo"),
    dict(method="DELETE", url="/echo", headers={"X-Trace": "t-1"}),
])
def test_both_transports_put_the_same_request_on_the_wire(server: str, shape: dict) -> None:
    seen = {}
    for name, outcome in both(lambda: requests.Request(**{**shape,
                                                          "url": server + shape["url"]})).items():
        assert outcome.response is not None, outcome.error
        echoed = outcome.response.json()
        echoed.pop("port")
        seen[name] = echoed

    assert seen["fast"] == seen["requests"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_session_that_keeps_cookies_sends_them_with_the_next_request(
    server: str, transport: str
) -> None:
    session = build_session(keep_cookies=True)
    send(transport, requests.Request("GET", server + "/cookie"), session)
    echoed = send(transport, requests.Request("GET", server + "/echo"), session)

    assert echoed.response is not None
    cookie = echoed.response.json()["headers"]["COOKIE"]
    assert sorted(cookie.split("; ")) == ["session=abc", "theme=dark"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cookie_one_task_got_is_never_sent_with_another_task(
    server: str, transport: str
) -> None:
    session = build_session()
    first = send(transport, requests.Request("GET", server + "/cookie"), session)
    echoed = send(transport, requests.Request("GET", server + "/echo"), session)

    assert first.response is not None and dict(first.response.cookies) == {
        "session": "abc", "theme": "dark"}
    assert echoed.response is not None
    assert "COOKIE" not in echoed.response.json()["headers"]
    assert len(session.cookies) == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_redirect_carries_the_cookie_it_set(server: str, transport: str) -> None:
    outcome = send(transport, requests.Request("GET", server + "/redirect"))

    assert outcome.response is not None
    assert outcome.response.json()["headers"]["COOKIE"] == "hop=1"
    assert [hop.status_code for hop in outcome.response.history] == [302]


def test_connections_are_kept_alive_and_reused(server: str) -> None:
    session = build_session()
    ports = set()
    for _ in range(20):
        outcome = send("fast", requests.Request("GET", server + "/echo"), session)
        assert outcome.response is not None
        ports.add(outcome.response.json()["port"])

    assert len(ports) == 1


# -- the same failures ---------------------------------------------------------------

def test_an_error_answer_reaches_on_exception_with_its_response(server: str) -> None:
    for name in TRANSPORTS:
        outcome = send(name, requests.Request("GET", server + "/busy"))
        assert outcome.error is not None and outcome.error.response is not None, name
        assert outcome.error.response.status_code == 503
        assert outcome.error.response.headers["Retry-After"] == "7"
        assert outcome.error.response.text == "later"
        assert isinstance(outcome.error.__cause__, requests.HTTPError)
        assert is_transient(outcome.error)

    for name in TRANSPORTS:
        missing = send(name, requests.Request("GET", server + "/missing"))
        assert missing.error is not None and not is_transient(missing.error)


def _cause_of(transport: str, url: str, **options: Any) -> BaseException:
    outcome = send(transport, requests.Request("GET", url), **options)
    assert outcome.error is not None, f"{transport}: {url} did not fail"
    assert outcome.error.__cause__ is not None
    return outcome.error.__cause__


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_a_refused_connection_is_a_transient_connection_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    for name in TRANSPORTS:
        outcome = send(name, requests.Request("GET", url))
        assert isinstance(outcome.error.__cause__, requests.ConnectionError), name
        assert is_transient(outcome.error)


def test_a_slow_answer_is_a_read_timeout(server: str) -> None:
    for name in TRANSPORTS:
        cause = _cause_of(name, server + "/slow", timeout=(1, 0.3))
        assert isinstance(cause, requests.ReadTimeout), (name, cause)


def test_a_body_cut_short_is_a_transient_chunked_encoding_error() -> None:
    def cut_short(connection: socket.socket) -> None:
        _read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    stream = _raw_server(cut_short)
    try:
        for name in TRANSPORTS:
            url = f"http://127.0.0.1:{stream.server_port}/"
            outcome = send(name, requests.Request("GET", url))
            assert isinstance(outcome.error.__cause__,
                              requests.exceptions.ChunkedEncodingError), (name, outcome.error)
            assert is_transient(outcome.error)
    finally:
        stream.stop()


def test_a_kept_alive_connection_closed_by_the_server_is_replaced() -> None:
    answered = []

    def one_answer_then_close(connection: socket.socket) -> None:
        _read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        answered.append(1)
        gevent.sleep(0.05)

    stream = _raw_server(one_answer_then_close)
    session = build_session()
    try:
        url = f"http://127.0.0.1:{stream.server_port}/"
        first = send("fast", requests.Request("GET", url), session)
        gevent.sleep(0.2)
        second = send("fast", requests.Request("GET", url), session)
    finally:
        stream.stop()

    assert first.response is not None and second.response is not None, second.error
    assert len(answered) == 2


def test_a_body_larger_than_the_limit_fails_once_decoded(server: str) -> None:
    for path in ("/big", "/bomb"):
        outcome = send("fast", requests.Request("GET", server + path),
                       max_body_bytes=BIG_BODY_BYTES // 2)
        assert outcome.error is not None
        assert "max_body_bytes" in str(outcome.error)
        assert outcome.error.response is not None


def test_a_body_that_does_not_decode_is_a_content_decoding_error(server: str) -> None:
    for name in TRANSPORTS:
        cause = _cause_of(name, server + "/bad-gzip")
        assert isinstance(cause, requests.exceptions.ContentDecodingError), (name, cause)


# -- TLS -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    key, cert = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    wsgi = WSGIServer(("127.0.0.1", 0), _app, keyfile=str(key), certfile=str(cert),
                      log=None, error_log=None)
    wsgi.start()
    yield f"https://127.0.0.1:{wsgi.server_port}", str(cert)
    wsgi.stop()


def test_https_is_verified_like_requests_does(tls_server: tuple[str, str]) -> None:
    url, cert = tls_server
    for name in TRANSPORTS:
        refused = send(name, requests.Request("GET", url + "/ok"))
        assert isinstance(refused.error.__cause__, requests.exceptions.SSLError), name
        assert not is_transient(refused.error)

        for verify in (cert, False):
            session = build_session(verify=verify)
            outcome = send(name, requests.Request("GET", url + "/gzip"), session)
            assert outcome.response is not None, (name, verify, outcome.error)
            assert outcome.response.content == b"zipped " * 100


# -- what the fast transport leaves to requests ------------------------------------------

def test_auto_sends_what_fast_does_not_support_with_requests(server: str) -> None:
    streamed = send("auto", requests.Request("GET", server + "/ok"), stream=True)
    proxied_session = build_session()
    proxied_session.proxies = {"http": "http://127.0.0.1:9"}
    proxied_session.trust_env = False
    bypassed = requests.Request("GET", server + "/ok")

    assert streamed.response is not None
    assert type(streamed.response.raw).__module__.startswith("urllib3")
    refused_by_proxy = send("auto", bypassed, proxied_session)
    assert isinstance(refused_by_proxy.error.__cause__, requests.exceptions.ProxyError)


@pytest.mark.parametrize("setup", ["stream", "proxy", "hook", "cert"])
def test_fast_refuses_what_it_does_not_support_and_says_why(server: str, setup: str) -> None:
    session = build_session()
    options: dict[str, Any] = {}
    request = requests.Request("GET", server + "/ok")
    if setup == "stream":
        options["stream"] = True
    elif setup == "proxy":
        session.proxies = {"http": "http://127.0.0.1:9"}
    elif setup == "hook":
        request.hooks["response"].append(lambda response, **kwargs: response)
    else:
        session.cert = "/nonexistent/client.pem"

    outcome = send("fast", request, session, **options)

    assert outcome.error is not None
    assert isinstance(outcome.error.__cause__, UnsupportedRequest)
    assert "transport 'fast' cannot send this request" in str(outcome.error)


def test_an_unknown_transport_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="auto, fast, requests"):
        RequestsPromise(Factory(requests.Request("GET", "http://x.test/")), Outcome(),
                        transport="quick")
