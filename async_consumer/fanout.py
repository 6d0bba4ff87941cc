"""Send many HTTP requests at once from ordinary synchronous code, without patching.

A Flask view on Gunicorn's sync or gthread worker is plain threaded code: patching
the whole process to speed up one view is a large change with risks of its own.
:func:`fan_out` needs none of it. It runs the requests in a gevent pool inside the
calling thread and returns when all are done or its deadline has passed::

    from async_consumer.fanout import fan_out

    results = fan_out([requests.Request("GET", url) for url in urls], deadline=2.0)
    answers = [result.response.json() for result in results if result.ok]

Why this is cooperative without patching: the fast transport writes on
geventhttpclient's sockets, which are gevent sockets, and resolves names with
gevent's resolver, so while one request waits the thread's hub runs the others.
Every OS thread gets a hub of its own the first time it uses gevent; other threads
of the process keep running meanwhile, as they do while any thread waits on I/O.

In a process that is not monkey-patched, requests' own stack would block the
thread, so every request goes through the fast transport (``transport="fast"``):
what it cannot send (a proxy, a streamed body, a client certificate, ...) fails
with a message that names why, and redirects are not followed. A patched process
(Gunicorn's gevent worker) gets the usual ``auto`` transport.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.pool
import requests
from gevent import monkey

from .errors import PromiseError, TaskTimeout
from .http.job import JobRequestFactory
from .http.promise import RequestFactory, RequestsPromise, ResponseHandler
from .http.session import DEFAULT_TIMEOUT, Timeout, build_session
from .jobs import HttpJob, parse_job

#: How many requests run at once unless the caller says otherwise.
DEFAULT_CONCURRENCY = 20
#: Seconds the killed requests get to close their sockets once the deadline passed.
KILL_GRACE_SECONDS = 1.0

#: What :func:`fan_out` accepts: a request, a job dict as the queue takes it, or a
#: promise with a handler of its own.
Item = requests.Request | requests.PreparedRequest | dict[str, Any] | HttpJob | RequestsPromise


@dataclass
class FanOutResult:
    """What happened to one request of a fan-out, in the order they were given.

    ``response`` is set whenever the server answered (also for a 4xx or 5xx, which
    sets ``error`` too); ``timed_out`` means the deadline passed first and the
    request's connection was closed.
    """

    promise: RequestsPromise
    response: requests.Response | None = None
    error: BaseException | None = None
    timed_out: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """The server answered and the answer counts as a success."""
        return self.response is not None and self.error is None

    @property
    def request(self) -> requests.PreparedRequest | None:
        """The request as it was prepared (``None`` if it never started)."""
        return self.promise.request


class _Given(RequestFactory):
    """Hands back a request that the caller built already."""

    def __init__(self, request: requests.Request | requests.PreparedRequest) -> None:
        self.request = request

    def create(self) -> requests.Request | requests.PreparedRequest:
        return self.request


class _Kept(ResponseHandler):
    """The promise keeps the response and the error; the result reads them there."""

    def on_success(self, response: requests.Response) -> None:
        pass

    def on_exception(self, error: PromiseError) -> None:
        pass


class _FanOutGreenlet(gevent.Greenlet):
    """Tells the HTTP promise how many requests share this thread's pool at once."""

    concurrency = DEFAULT_CONCURRENCY


def fan_out(
    items: Iterable[Item],
    *,
    deadline: float = 10.0,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: Timeout = DEFAULT_TIMEOUT,
    raise_for_status: bool = True,
    session: requests.Session | None = None,
    transport: str | None = None,
) -> list[FanOutResult]:
    """Send every request concurrently in this thread; return within ``deadline`` seconds.

    Args:
        items: ``requests.Request`` or ``PreparedRequest`` objects, job dicts in the
            queue's format (``{"url": ..., "method": ..., "json": ...}``), or
            :class:`RequestsPromise` objects whose handlers get the outcome.
        deadline: seconds from now; requests still running then are interrupted,
            their connections closed, and reported with ``timed_out``.
        concurrency: how many requests are in flight at once.
        timeout: (connect, read) seconds for each request, or one number for both.
        raise_for_status: a 4xx or 5xx answer sets ``error`` (the response is kept).
        session: the session whose headers, cookies and TLS settings apply; by
            default one made for this call.
        transport: for the requests built here; by default ``"fast"`` in a process
            that is not monkey-patched and ``"auto"`` in one that is.

    Returns:
        One :class:`FanOutResult` per item, in the order of ``items``.
    """
    if deadline <= 0:
        raise ValueError(f"deadline must be a positive number of seconds, not {deadline!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")

    patched = monkey.is_module_patched("socket")
    chosen = transport or ("auto" if patched else "fast")
    session = _fan_out_session(session, patched)
    promises = [_promise_for(item, session, timeout, raise_for_status, chosen)
                for item in items]
    _refuse_what_would_block(promises, patched)

    results = [FanOutResult(promise) for promise in promises]
    _run_until(results, concurrency, time.monotonic() + deadline)
    return results


def _fan_out_session(given: requests.Session | None, patched: bool) -> requests.Session:
    """The session for one fan-out; it follows no redirect where that would block.

    After a redirect the fast transport hands the next hops to requests' own stack,
    which blocks the whole thread in a process that is not patched. With no redirect
    allowed, the request fails with ``TooManyRedirects`` before any hop is sent. A
    caller's session is copied for that (sharing its cookie jar), not changed.
    """
    if given is None:
        session = build_session()
    elif patched or given.max_redirects == 0:
        return given
    else:
        session = requests.Session()
        for name in requests.Session.__attrs__:
            setattr(session, name, getattr(given, name))
    if not patched:
        session.max_redirects = 0
    return session


def _promise_for(
    item: Item, session: requests.Session, timeout: Timeout, raise_for_status: bool,
    transport: str,
) -> RequestsPromise:
    if isinstance(item, RequestsPromise):
        return item

    factory: RequestFactory
    if isinstance(item, (requests.Request, requests.PreparedRequest)):
        factory = _Given(item)
    elif isinstance(item, (dict, HttpJob)):
        job = item if isinstance(item, HttpJob) else parse_job(item)
        factory = JobRequestFactory(job)
        if job.timeout is not None:
            timeout = tuple(job.timeout) if isinstance(job.timeout, list) else job.timeout
    else:
        raise TypeError(f"fan_out takes requests, job dicts or RequestsPromise objects, "
                        f"not {type(item).__name__}")
    return RequestsPromise(factory, _Kept(), session, timeout,
                           raise_for_status=raise_for_status, transport=transport)


def _refuse_what_would_block(promises: Sequence[RequestsPromise], patched: bool) -> None:
    """Fail before sending anything rather than run a request on blocking sockets."""
    if patched:
        return

    blocking = [index for index, promise in enumerate(promises) if promise.transport != "fast"]
    if blocking:
        raise ValueError(
            f"the promises at positions {blocking} may be sent by requests' own stack, "
            "which blocks the whole thread in a process that is not monkey-patched; "
            "give them transport='fast' (or patch the process first)"
        )


def _run_until(results: list[FanOutResult], concurrency: int, ends_at: float) -> None:
    """Run the promises in a pool of this thread's hub until done or ``ends_at``."""
    pool = gevent.pool.Pool(concurrency)

    def feed() -> None:
        for result in results:
            worker = _FanOutGreenlet(_run_one, result)
            worker.concurrency = concurrency
            pool.start(worker)

    feeder = gevent.spawn(feed)
    feeder.join(timeout=max(ends_at - time.monotonic(), 0))
    if feeder.dead:
        pool.join(timeout=max(ends_at - time.monotonic(), 0))

    # Whatever still runs is interrupted: GreenletExit closes its socket on the way out.
    feeder.kill()
    pool.kill(timeout=KILL_GRACE_SECONDS)
    for result in results:
        if result.response is None and result.error is None:
            result.timed_out = True
            result.error = TaskTimeout("the fan-out's deadline passed before an answer came",
                                       promise=result.promise)


def _run_one(result: FanOutResult) -> None:
    promise = result.promise
    started = time.monotonic()
    try:
        promise.run()
    except Exception as error:
        result.error = error
    else:
        result.response = promise.response
        result.error = promise.error
    finally:
        result.elapsed = time.monotonic() - started
