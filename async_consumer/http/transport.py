"""The fast transport: prepared ``requests`` requests sent over geventhttpclient.

``requests`` spends most of its ~0.5 ms per request in its own layers (adapter,
urllib3's connection pool, ``http.client``), not on the wire. This transport takes
the ``PreparedRequest`` that the session built (headers, auth, cookies and body are
merged exactly as ``requests`` does), writes it on a pooled gevent socket, parses the
answer with geventhttpclient's C parser and hands back a real ``requests.Response``.
Factories and handlers keep the types they are written against.

It covers plain requests, which is what a worker sends: http and https, bytes or
text bodies, keep-alive, gzip/deflate decoding, cookies and redirects. Whatever it
does not cover is named by :func:`unsupported_reason`; the promise then falls back
to ``requests`` (transport ``auto``) or refuses the request (transport ``fast``),
so the two transports never silently differ.

Note:
    After a redirect, the following hops are sent by ``requests`` itself. The
    proxy and CA-bundle environment variables are read as ``requests`` reads them,
    but a proxy always means ``requests`` sends the request.
"""

from __future__ import annotations

import collections
import datetime
import errno
import http.client
import os
import socket
import ssl
import time
import warnings
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import gevent.socket
import requests
from gevent import monkey
from geventhttpclient.connectionpool import ConnectionPool
from geventhttpclient.response import (
    HTTPConnectionClosed,
    HTTPParseError,
    HTTPSocketPoolResponse,
)
from requests.cookies import MockRequest, MockResponse, RequestsCookieJar
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.exceptions import InsecureRequestWarning
from urllib3.response import HTTPResponse, _get_decoder

from .errors import BodyTooLarge
from .preparation import headers_from_store
from .session import DefaultTimeoutAdapter, Timeout

#: Distinct (scheme, host, port, TLS, connect timeout) pools kept per thread; the
#: least recently used one is closed beyond that.
MAX_POOLS = 512
READ_BLOCK_BYTES = 64 * 1024
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class UnsupportedRequest(requests.RequestException):
    """The fast transport was required for a request it does not support."""


def unsupported_reason(
    session: requests.Session, request: requests.PreparedRequest, stream: bool
) -> str | None:
    """Why the fast transport cannot send ``request`` exactly as ``requests`` would.

    ``None`` means it can. Every check is a dictionary lookup or two: this runs
    before every request.
    """
    if stream:
        return "stream=True (the handler reads the body from response.raw)"
    if request.body is not None and not isinstance(request.body, (bytes, str)):
        return "the body is a file or an iterator (a streamed upload)"

    scheme = (request.url or "").partition(":")[0].lower()
    if scheme not in DEFAULT_PORTS:
        return f"the URL scheme {scheme!r} is not http or https"
    if request.hooks.get("response"):
        return "response hooks are set"
    if session.cert:
        return "a client certificate is configured"
    if session.proxies or (session.trust_env and _proxy_variables_set()):
        return "a proxy is configured"
    if not _only_standard_adapters(session):
        return "a custom transport adapter is mounted on the session"
    return None


def _only_standard_adapters(session: requests.Session) -> bool:
    """Whether every adapter mounted on the session is requests' own (or ours)."""
    for adapter in session.adapters.values():
        if type(adapter) not in _STANDARD_ADAPTERS:
            return False
    return True


_STANDARD_ADAPTERS = (DefaultTimeoutAdapter, requests.adapters.HTTPAdapter)


def _proxy_variables_set() -> bool:
    # os.environ encodes every key it is asked for, which made this check cost more
    # than writing the request; its underlying dict of bytes answers the same question.
    raw = getattr(os.environ, "_data", None)
    if raw is None:
        return any(name in os.environ or name.upper() in os.environ for name in PROXY_VARIABLES)
    return any(name in raw for name in _PROXY_VARIABLE_KEYS)


_PROXY_VARIABLE_KEYS = tuple(
    os.fsencode(spelling) for name in PROXY_VARIABLES for spelling in (name, name.upper())
)


class _ConsumedBody:
    """Stands in for ``response.raw`` once the body has been read, as with requests."""

    _original_response = None

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        return b""

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        return iter(())

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FastResponse(requests.Response):
    """A ``requests.Response`` built without requests' generic constructor.

    Its cookie jar is made on first use: most answers set no cookie, and a jar costs
    a lock. Everything else is a plain ``requests.Response``.
    """

    def __init__(self) -> None:
        self._content = False  # type: ignore[assignment]
        self._content_consumed = False
        self._next = None
        self.history = []
        self.elapsed = datetime.timedelta(0)
        self._cookie_jar: RequestsCookieJar | None = None

    @property  # type: ignore[override]
    def cookies(self) -> RequestsCookieJar:
        if self._cookie_jar is None:
            self._cookie_jar = RequestsCookieJar()
        return self._cookie_jar

    @cookies.setter
    def cookies(self, jar: RequestsCookieJar) -> None:
        self._cookie_jar = jar


class _Origin(NamedTuple):
    pool: Any
    host_header: str


class FastTransport:
    """Keeps one connection pool per origin for the OS thread that owns it.

    Like the shared session, a transport must not be used from another OS thread:
    its sockets belong to this thread's hub.
    """

    def __init__(self, pool_size: int) -> None:
        self.pool_size = pool_size
        self._pools: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._contexts: dict[Any, ssl.SSLContext] = {}

    def grow(self, pool_size: int) -> None:
        """Let more requests run at once per origin; existing pools are replaced."""
        if pool_size <= self.pool_size:
            return
        self.pool_size = pool_size
        self.close()

    def close(self) -> None:
        for origin in self._pools.values():
            origin.pool.close()
        self._pools.clear()

    def send(
        self,
        session: requests.Session,
        request: requests.PreparedRequest,
        timeout: Timeout,
        max_body_bytes: int | None,
    ) -> requests.Response:
        """Send ``request`` and read its body; redirects are followed like requests does."""
        connect_timeout, read_timeout = _split_timeout(timeout)
        verify = _effective_verify(session)
        if verify is False and request.url and request.url[:6].lower() == "https:":
            _warn_unverified(request.url)
        response = self._send_once(session, request, connect_timeout, read_timeout, verify,
                                   max_body_bytes)
        if not response.is_redirect:
            return response
        return _follow_redirects(session, response, request, timeout, verify)

    # -- one request ------------------------------------------------------------------

    def _send_once(
        self,
        session: requests.Session,
        request: requests.PreparedRequest,
        connect_timeout: float | None,
        read_timeout: float | None,
        verify: bool | str,
        max_body_bytes: int | None,
    ) -> requests.Response:
        url = urlsplit(request.url or "")
        origin = self._origin(url, connect_timeout, verify)
        pool = origin.pool
        head, body = _encode(request, url, origin.host_header)
        started = time.monotonic()
        attempts = 2 if request.method in IDEMPOTENT_METHODS else 1
        while True:
            attempts -= 1
            reused = not pool._socket_queue.empty()
            sock = _connect(pool, request)
            try:
                parsed = _exchange(pool, sock, head, body, read_timeout, request)
                break
            except HTTPConnectionClosed as error:
                # A kept-alive connection the server had already closed: nothing of
                # the request was processed, so an idempotent one is sent again.
                if attempts <= 0 or not reused:
                    raise requests.ConnectionError(
                        f"the server closed the connection without answering: {error}",
                        request=request,
                    ) from error

        response = _build_response(parsed, request, session, started)
        response._content = _read_body(parsed, response, max_body_bytes)
        response._content_consumed = True  # type: ignore[attr-defined]
        response.elapsed = datetime.timedelta(seconds=time.monotonic() - started)
        return response

    def _origin(self, url: Any, connect_timeout: float | None, verify: bool | str) -> Any:
        """The pool and Host header for the URL's origin, made on first use."""
        scheme = url.scheme.lower()
        tls = verify if scheme == "https" else None
        key = (scheme, url.netloc, tls, connect_timeout)
        origin = self._pools.get(key)
        if origin is not None:
            self._pools.move_to_end(key)
            return origin

        origin = _Origin(self._new_pool(url, scheme, tls, connect_timeout), _host_header(url))
        self._pools[key] = origin
        if len(self._pools) > MAX_POOLS:
            _, oldest = self._pools.popitem(last=False)
            oldest.pool.close()
        return origin

    def _new_pool(
        self, url: Any, scheme: str, tls: bool | str | None, connect_timeout: float | None
    ) -> Any:
        plain_pool, tls_pool = _pool_classes()
        host = url.hostname or ""
        port = url.port or DEFAULT_PORTS[scheme]
        options: dict[str, Any] = dict(size=self.pool_size, network_timeout=None,
                                       connection_timeout=connect_timeout)
        if tls is None:
            return plain_pool(host, port, host, port, **options)
        return tls_pool(host, port, self._context_for(tls), **options)

    def _context_for(self, verify: bool | str) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            context = _tls_context(verify)
            self._contexts[verify] = context
        return context


def _warn_unverified(url: str) -> None:
    """The warning urllib3 gives for an unverified HTTPS request, so both transports do."""
    host = urlsplit(url).hostname
    warnings.warn(
        f"Unverified HTTPS request is being made to host '{host}'. Adding certificate "
        "verification is strongly advised.",
        InsecureRequestWarning,
        stacklevel=4,
    )


def _split_timeout(timeout: Timeout) -> tuple[float | None, float | None]:
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    return timeout, timeout


def _effective_verify(session: requests.Session) -> bool | str:
    """The verification requests would apply; a CA-bundle variable applies only to True."""
    verify = session.verify
    if verify is True and session.trust_env:
        for name in CA_BUNDLE_VARIABLES:
            bundle = os.environ.get(name)
            if bundle:
                return bundle
    return verify if verify is not None else True


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """A gevent TLS context verifying as requests would: certifi, a bundle, or nothing."""
    import certifi
    import gevent.ssl

    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    location = certifi.where() if verify is True else str(verify)
    if os.path.isdir(location):
        context.load_verify_locations(capath=location)
    else:
        context.load_verify_locations(cafile=location)
    return context


_POOL_CLASSES: tuple[Any, Any] | None = None


def _pool_classes() -> tuple[Any, Any]:
    """geventhttpclient pools (plain, TLS) with a cheaper idle-connection check.

    Built on first use, so that importing this module does not import gevent's ssl.
    """
    global _POOL_CLASSES
    if _POOL_CLASSES is not None:
        return _POOL_CLASSES

    unpatched_select = monkey.get_original("select", "select")

    class PlainPool(ConnectionPool):
        def _resolve(self) -> Any:
            # Through the socket module, as urllib3 does, so that a patched or wrapped
            # resolver applies to both transports; gevent's own when not patched.
            lookup = socket.getaddrinfo if monkey.is_module_patched("socket") \
                else gevent.socket.getaddrinfo
            return lookup(self._connection_host, self._connection_port, 0,
                          socket.SOCK_STREAM, socket.IPPROTO_TCP)

        def _is_socket_alive(self, sock: Any) -> bool:
            # An idle kept-alive connection that is readable was closed by the server
            # (or holds stray bytes): either way it cannot carry a request. The
            # check uses the unpatched select, which answers at once for timeout 0,
            # instead of a round through the hub.
            try:
                if sock.fileno() < 0:
                    return False
                readable, _, _ = unpatched_select([sock.fileno()], [], [], 0.0)
                return not readable
            except (OSError, ValueError):
                return False

    class TLSPool(PlainPool):
        def __init__(self, host: str, port: int, context: ssl.SSLContext, **kw: Any) -> None:
            self.tls_context = context
            super().__init__(host, port, host, port, **kw)

        def _connect_socket(self, sock: Any, address: Any) -> Any:
            sock.connect(address)
            return self.tls_context.wrap_socket(sock, server_hostname=self._request_host)

    _POOL_CLASSES = (PlainPool, TLSPool)
    return _POOL_CLASSES


def _encode(
    request: requests.PreparedRequest, url: Any, host_header: str
) -> tuple[bytes, bytes]:
    """The request head and body as http.client would write them for requests."""
    target = url.path or "/"
    if url.query:
        target = f"{target}?{url.query}"

    lines = [f"{request.method} {target} HTTP/1.1", f"Host: {host_header}"]
    headers = request.headers
    # The dict behind CaseInsensitiveDict: its Mapping methods are slow on a hot path.
    lines.extend(f"{name}: {value}" for name, value in headers._store.values())  # type: ignore
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if body is None:
        body = b""
    if body and "content-length" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    try:
        head = "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as error:
        raise requests.exceptions.InvalidHeader(
            f"a request header holds a character outside latin-1: {error}"
        ) from error
    return head, body


def _host_header(url: Any) -> str:
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = url.port
    if port and port != DEFAULT_PORTS.get(url.scheme.lower()):
        return f"{host}:{port}"
    return host


def _connect(pool: Any, request: requests.PreparedRequest) -> Any:
    """A pooled or new connection; failures become the errors requests raises."""
    where = f"{pool._request_host}:{pool._request_port}"
    try:
        return pool.get_socket()
    except socket.timeout as error:
        raise requests.ConnectTimeout(f"connecting to {where} timed out: {error}",
                                      request=request) from error
    except ssl.SSLError as error:
        raise requests.exceptions.SSLError(f"TLS with {where} failed: {error}",
                                           request=request) from error
    except OSError as error:
        raise requests.ConnectionError(f"cannot connect to {where}: {error}",
                                       request=request) from error


def _exchange(
    pool: Any,
    sock: Any,
    head: bytes,
    body: bytes,
    read_timeout: float | None,
    request: requests.PreparedRequest,
) -> Any:
    """Write the request and read the answer's head.

    Until the response object exists the socket is ours to give back; once it does,
    geventhttpclient's response gives it back itself, on success and on error.
    """
    try:
        sock.settimeout(read_timeout)
        data = head + body
        sent = sock.send(data)
        if sent < len(data):
            sock.sendall(data[sent:])
    except BaseException as error:
        pool.release_socket(sock)
        if isinstance(error, OSError) and error.errno in (errno.ECONNRESET, errno.EPIPE):
            raise HTTPConnectionClosed(str(error)) from error
        if isinstance(error, OSError):
            raise requests.ConnectionError(f"sending the request failed: {error}",
                                           request=request) from error
        raise

    try:
        return HTTPSocketPoolResponse(sock, pool, block_size=READ_BLOCK_BYTES,
                                      method=request.method or "GET")
    except HTTPConnectionClosed:
        raise
    except socket.timeout as error:
        raise requests.ReadTimeout(f"no answer within the read timeout: {error}",
                                   request=request) from error
    except (OSError, HTTPParseError) as error:
        raise requests.ConnectionError(f"the connection broke before the answer: {error}",
                                       request=request) from error


def _build_response(
    parsed: Any,
    request: requests.PreparedRequest,
    session: requests.Session,
    started: float,
) -> requests.Response:
    response = FastResponse()
    response.status_code = parsed.status_code
    response.reason = parsed.status_message or http.client.responses.get(
        parsed.status_code, "")
    response.headers = _headers(parsed)
    response.encoding = get_encoding_from_headers(response.headers)
    response.url = request.url or ""
    response.request = request
    response.raw = _ConsumedBody()
    if "set-cookie" in response.headers:
        _store_cookies(parsed, request, response, session)
    return response


def _headers(parsed: Any) -> CaseInsensitiveDict:
    """Repeated fields are joined with ", ", as urllib3 hands them to requests."""
    store: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
    for name, value in parsed.items():
        key = name.lower()
        earlier = store.get(key)
        store[key] = (name, value) if earlier is None else (name, f"{earlier[1]}, {value}")
    return headers_from_store(store)


def _store_cookies(
    parsed: Any,
    request: requests.PreparedRequest,
    response: requests.Response,
    session: requests.Session,
) -> None:
    """Keep Set-Cookie in the response's, the session's and the request's jars, as
    requests does; the session's jar policy decides whether it keeps them."""
    message = http.client.HTTPMessage()
    for name, value in parsed.items():
        if name.lower() == "set-cookie":
            message["Set-Cookie"] = value
    fake_request, fake_response = MockRequest(request), MockResponse(message)
    response.cookies.extract_cookies(fake_response, fake_request)  # type: ignore[arg-type]
    session.cookies.extract_cookies(fake_response, fake_request)  # type: ignore[arg-type]
    # The request's own jar: a redirect's next hop is built from it, as in requests.
    request._cookies.extract_cookies(fake_response, fake_request)  # type: ignore


def _read_body(parsed: Any, response: requests.Response, limit: int | None) -> bytes:
    """Read and decode the body, refusing one larger than ``limit`` once decoded."""
    decoder = _decoder_for(response.headers.get("content-encoding", ""))
    chunks = []
    size = 0
    try:
        while True:
            block = parsed.read(READ_BLOCK_BYTES)
            last = not block
            if decoder is not None:
                block = _decode(decoder, block, response, final=last)
            size += len(block)
            if limit is not None and size > limit:
                raise BodyTooLarge(
                    f"the response body is larger than max_body_bytes ({limit} bytes)",
                    response=response,
                )
            chunks.append(block)
            if last:
                break
    except requests.RequestException:
        raise  # already the error requests raises (it is an OSError too)
    except socket.timeout as error:
        raise requests.ConnectionError(f"reading the body timed out: {error}",
                                       request=response.request) from error
    except (OSError, HTTPParseError) as error:
        raise requests.exceptions.ChunkedEncodingError(
            f"the connection broke in the middle of the body: {error}",
            request=response.request,
        ) from error
    finally:
        parsed.release()
    return b"".join(chunks)


def _decoder_for(content_encoding: str) -> Any:
    """urllib3's decoder for what urllib3 would decode for requests; None for none."""
    if not content_encoding:
        return None

    encoding = content_encoding.lower()
    known = HTTPResponse.CONTENT_DECODERS
    if encoding in known:
        return _get_decoder(encoding)
    if "," in encoding and any(part.strip() in known for part in encoding.split(",")):
        return _get_decoder(encoding)
    return None


def _decode(decoder: Any, block: bytes, response: requests.Response, final: bool) -> bytes:
    try:
        decoded = decoder.decompress(block) if block else b""
        return decoded + decoder.flush() if final else decoded
    except Exception as error:
        raise requests.exceptions.ContentDecodingError(
            f"the body could not be decoded ({response.headers.get('content-encoding')}): "
            f"{error}", request=response.request,
        ) from error


def _follow_redirects(
    session: requests.Session,
    response: requests.Response,
    request: requests.PreparedRequest,
    timeout: Timeout,
    verify: bool | str,
) -> requests.Response:
    """The later hops go through requests itself, with the history it would keep."""
    settings: dict[str, Any] = dict(stream=True, timeout=timeout, verify=verify, proxies={})
    hops = session.resolve_redirects(response, request, **settings)
    history = [response, *hops]
    final = history.pop()
    final.history = history
    return final
