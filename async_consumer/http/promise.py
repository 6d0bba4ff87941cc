"""The HTTP promise: one request on a shared, pooled, cooperative session."""

from __future__ import annotations

import abc
from typing import Any
from urllib.parse import urlsplit

import requests

from ..workers import current_concurrency
from ..errors import PromiseError
from ..patching import ensure_cooperative
from ..promise import Promise
from ..status import Status
from ..logs import as_log
from .errors import BodyTooLarge, to_promise_error
from .preparation import prepare
from .session import (
    DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
    Timeout,
    shared_session,
    shared_transport,
)
from .transport import UnsupportedRequest, unsupported_reason

#: Bodies larger than this fail the request unless the promise says otherwise.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
BODY_CHUNK_BYTES = 64 * 1024
#: ``fast``: geventhttpclient, refusing what it does not support; ``requests``:
#: requests' own stack; ``auto``: fast where supported, requests for the rest.
TRANSPORTS = ("auto", "fast", "requests")
DEFAULT_TRANSPORT = "auto"

_fallbacks_reported: set[str] = set()


class RequestFactory(abc.ABC):
    """Builds the request a promise sends; called in the task's greenlet."""

    @abc.abstractmethod
    def create(self) -> requests.Request | requests.PreparedRequest:
        """Return the request to send."""


class ResponseHandler(abc.ABC):
    """Receives the outcome of a request, in the task's greenlet.

    Exactly one of the two methods is called for every request. An exception that
    escapes either one fails that task only (it is logged and retried); raising
    :class:`~async_consumer.RetryLater` asks for another try on purpose.
    """

    @abc.abstractmethod
    def on_success(self, response: requests.Response) -> None:
        """The server answered (with a status below 400, unless configured otherwise)."""

    @abc.abstractmethod
    def on_exception(self, error: PromiseError) -> None:
        """The request failed: ``error.__cause__`` says why, ``error.response`` is set
        when the server answered."""


class RequestsPromise(Promise):
    """Sends the factory's request and hands the result to the handler.

    Args:
        factory: builds the request.
        handler: receives the response or the error.
        session: the session to send with; by default this thread's shared session,
            whose pool grows to the consumer's concurrency.
        timeout: (connect, read) seconds, or one number for both. Always applied.
        raise_for_status: send 4xx/5xx answers to ``on_exception`` (the default, as
            the original library did); ``False`` sends every answer to ``on_success``.
        stream: do not read the body before calling ``on_success``; the handler reads
            what it needs from ``response.raw`` or ``iter_content`` before returning.
        max_body_bytes: a larger body (after decompression) fails the request with a
            ``PromiseError`` instead of filling the worker's memory; ``None``: no limit.
        transport: ``"auto"`` (default) sends with the fast transport (geventhttpclient,
            several times cheaper per request) when it supports the request, and with
            ``requests`` otherwise; ``"fast"`` fails a request it does not support;
            ``"requests"`` always uses ``requests``. See ``docs/http.md``.
        task_id: names the task in logs and results.

    The response is always closed once the handler returns or raises, so a handler
    that leaves a streamed body unread cannot hold a pooled connection.
    """

    def __init__(
        self,
        factory: RequestFactory,
        handler: ResponseHandler,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        *,
        raise_for_status: bool = True,
        stream: bool | None = None,
        max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
        transport: str = DEFAULT_TRANSPORT,
        task_id: str | None = None,
    ) -> None:
        super().__init__(task_id)
        if timeout is None:
            raise ValueError("timeout must be set: requests without one can hang forever")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, "
                             f"not {transport!r}")
        self.factory = factory
        self.handler = handler
        self.session = session
        self.timeout = timeout
        self.raise_for_status = raise_for_status
        self.stream = stream
        self.max_body_bytes = max_body_bytes
        self.transport = transport
        self.request: requests.PreparedRequest | None = None
        self.response: requests.Response | None = None

    def run(self) -> None:
        if self.transport != "fast":
            # requests' own stack is cooperative only in a patched process, and "auto"
            # may hand it any request; "fast" writes on gevent sockets, which are
            # cooperative without patching (see async_consumer.fanout).
            ensure_cooperative()
        pool_size = max(current_concurrency(), DEFAULT_POOL_SIZE)
        session = self.session or shared_session(pool_size)
        self.request = prepare(session, self.factory.create())

        try:
            response = self._send(session, self.request, pool_size)
        except requests.RequestException as error:
            self._fail(to_promise_error(error, self))
            return
        except BodyTooLarge as error:
            error.promise = self
            self._fail(error)
            return

        self.response = response
        try:
            self._deliver(response)
        finally:
            response.close()

    def _send(
        self, session: requests.Session, request: requests.PreparedRequest, pool_size: int
    ) -> Any:
        streamed = session.stream if self.stream is None else self.stream
        if self.transport != "requests":
            reason = unsupported_reason(session, request, bool(streamed))
            if reason is None:
                response = shared_transport(pool_size).send(
                    session, request, self.timeout, self.max_body_bytes
                )
                if not response._content_consumed:  # a redirect's last hop
                    _read_body(response, self.max_body_bytes)
                return response
            self._refuse_or_report(reason)

        # The session's own verify setting is passed on purpose: with None, requests
        # lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a configured bundle or False.
        settings = session.merge_environment_settings(
            request.url, {}, True, session.verify, None
        )
        response = session.send(request, timeout=self.timeout, allow_redirects=True, **settings)
        if not streamed:
            _read_body(response, self.max_body_bytes)
        return response

    def _refuse_or_report(self, reason: str) -> None:
        """``fast`` refuses what it cannot send; ``auto`` says once why requests sends it."""
        if self.transport == "fast":
            raise UnsupportedRequest(
                f"transport 'fast' cannot send this request: {reason}; use transport "
                "'auto' to send such requests with requests"
            )
        if reason not in _fallbacks_reported:
            _fallbacks_reported.add(reason)
            as_log().info("HTTP requests where {} are sent with requests, not the fast "
                          "transport", reason)

    def _deliver(self, response: requests.Response) -> None:
        if self.raise_for_status and response.status_code >= 400:
            try:
                response.raise_for_status()
            except requests.HTTPError as error:
                self._fail(to_promise_error(error, self))
                return

        self.handler.on_success(response)
        self.status = Status.OK

    def _fail(self, error: PromiseError) -> None:
        self.error = error
        self.handle_exception(error)
        self.status = Status.FAILED

    def handle_exception(self, error: PromiseError) -> None:
        self.handler.on_exception(error)

    def describe(self) -> str:
        request = self.request
        if request is None:
            return type(self).__name__
        return f"{request.method} {_host_and_port(request.url or '')}"


def _host_and_port(url: str) -> str:
    """The host of a URL without any user name or password, for log lines."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    return f"{host}:{port}" if port else host


def _read_body(response: requests.Response, limit: int | None) -> None:
    """Read the body into ``response.content``, refusing one larger than ``limit``."""
    chunks = []
    size = 0
    for chunk in response.iter_content(BODY_CHUNK_BYTES):
        size += len(chunk)
        if limit is not None and size > limit:
            response.close()
            raise BodyTooLarge(
                f"the response body is larger than max_body_bytes ({limit} bytes)",
                response=response,
            )
        chunks.append(chunk)

    response._content = b"".join(chunks)
    response._content_consumed = True  # type: ignore[attr-defined]
