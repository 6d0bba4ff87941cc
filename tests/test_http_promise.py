"""The HTTP promise against real servers on loopback.

Every request goes to a server this module or ``conftest.py`` starts on 127.0.0.1:
the devserver target, or a small gevent WSGI server inside this process where a test
needs to see the server side of a connection. Where a test needs host names, name
resolution is replaced by a stub, so no DNS query leaves the process.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import requests
from gevent import monkey
from gevent.pywsgi import WSGIServer
from loguru import logger as loguru_logger

from async_consumer import (
    AsyncConsumer,
    MemoryProvider,
    Promise,
    PromiseError,
    Provider,
    Status,
    TaskTimeout,
)
from async_consumer.http import (
    DefaultTimeoutAdapter,
    RequestFactory,
    RequestsPromise,
    ResponseHandler,
    build_session,
    shared_session,
)
from conftest import ListHandler

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """``requests`` honours proxy variables; these tests talk to loopback only."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# -- small parts the tests share ---------------------------------------------------------


class Get(RequestFactory):
    """A GET of one URL; extra keywords go to ``requests.Request``."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options

    def create(self) -> requests.Request:
        return requests.Request("GET", self.url, **self.options)


class Recorder(ResponseHandler):
    """Keeps every response and error it is given, stamped with seconds since ``zero``."""

    def __init__(self, zero: float | None = None) -> None:
        self.zero = time.monotonic() if zero is None else zero
        self.responses: list[Any] = []
        self.errors: list[PromiseError] = []
        self.success_at: list[float] = []
        self.error_at: list[float] = []

    def on_success(self, response: requests.Response) -> None:
        self.responses.append(response)
        self.success_at.append(time.monotonic() - self.zero)

    def on_exception(self, error: PromiseError) -> None:
        self.errors.append(error)
        self.error_at.append(time.monotonic() - self.zero)


def run(promises: list[Promise], concurrency: int, *, task_timeout: float = 10.0,
        logger: Any = None) -> tuple[AsyncConsumer, MemoryProvider]:
    """Run ``promises`` to the end on a fresh consumer; return it and its provider."""
    provider = MemoryProvider(promises)
    consumer = AsyncConsumer(provider, concurrency, 0.01, logger, task_timeout=task_timeout,
                             shutdown_timeout=5, handle_signals=False)
    consumer.consume(until_empty=True)
    return consumer, provider


def unused_loopback_port() -> int:
    """A loopback port that nothing listens on (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def outcome_of(provider: MemoryProvider, promise: Promise) -> Status:
    settled = [item for item in provider.settled if item is promise]
    assert len(settled) == 1, f"{promise!r} was settled {len(settled)} times"
    return settled[0].outcome


# -- 1. the seed example -----------------------------------------------------------------


class SeedFactory(RequestFactory):
    def __init__(self, url: str) -> None:
        self.url = url

    def create(self) -> requests.Request:
        return requests.Request("GET", self.url)


class SeedHandler(ResponseHandler):
    def __init__(self, log: logging.Logger, ran: list[Any]) -> None:
        self.log = log
        self.ran = ran

    def on_success(self, response: requests.Response) -> None:
        self.log.info("request succeeded with %s", response.status_code)
        self.ran.append(response)

    def on_exception(self, error: PromiseError) -> None:
        self.log.error("request went wrong: %s", error)
        self.ran.append(error)


class SeedProvider(Provider):
    """Makes a new promise on every call until ``total`` were made, then has nothing."""

    def __init__(self, url: str, total: int, log: logging.Logger) -> None:
        self.url = url
        self.total = total
        self.log = log
        self.made = 0
        self.ran: list[Any] = []

    def get(self) -> Promise | None:
        if self.made >= self.total:
            return None
        self.made += 1
        return RequestsPromise(SeedFactory(self.url), SeedHandler(self.log, self.ran))


def test_the_seed_example_runs_every_task_with_exactly_concurrency_requests_in_flight(
    fresh_target,
) -> None:
    log = logging.getLogger("tests.seed_example")
    kept = ListHandler()
    log.addHandler(kept)
    log.setLevel(logging.INFO)
    provider = SeedProvider(f"{fresh_target.url}/delay/200", 40, log)
    try:
        AsyncConsumer(provider, 10, 0.05, log, handle_signals=False).consume(until_empty=True)
    finally:
        log.removeHandler(kept)

    assert provider.made == 40
    assert len(provider.ran) == 40
    assert all(isinstance(item, requests.Response) for item in provider.ran), provider.ran
    assert {item.status_code for item in provider.ran} == {200}

    stats = fresh_target.stats()
    assert stats["total"] == 40
    assert stats["max_in_flight"] == 10

    messages = [record.getMessage() for record in kept.records]
    assert messages.count("request succeeded with 200") == 40
    assert any(message.startswith("consumer starting") for message in messages)


# -- 2. error statuses -------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 404, 418, 500, 503])
def test_an_error_status_reaches_on_exception_with_the_response_and_an_http_error(
    target, code: int
) -> None:
    handler = Recorder()
    promise = RequestsPromise(Get(f"{target.url}/status/{code}"), handler)
    _, provider = run([promise], 1)

    assert handler.responses == []
    [error] = handler.errors
    assert error.response is not None and error.response.status_code == code
    assert isinstance(error.__cause__, requests.HTTPError)
    assert error.promise is promise
    assert outcome_of(provider, promise) is Status.FAILED


@pytest.mark.parametrize("code", [
    200,
    204,
    302,
    404,
    500,
])
def test_every_status_reaches_on_success_when_raise_for_status_is_off(target, code) -> None:
    handler = Recorder()
    url = f"{target.url}/status/{code}"
    promise = RequestsPromise(Get(url), handler, raise_for_status=False)
    _, provider = run([promise], 1)

    assert handler.errors == []
    [response] = handler.responses
    assert response.status_code == code
    assert outcome_of(provider, promise) is Status.OK


def test_a_success_status_reaches_on_success_with_raise_for_status_on(target) -> None:
    handler = Recorder()
    promise = RequestsPromise(Get(f"{target.url}/status/201"), handler)
    _, provider = run([promise], 1)

    assert handler.errors == []
    assert [response.status_code for response in handler.responses] == [201]
    assert outcome_of(provider, promise) is Status.OK


# -- 3. and 4. a server that never answers ------------------------------------------------


def test_a_server_that_never_answers_ends_in_a_read_timeout_and_frees_the_pool(
    fresh_target,
) -> None:
    handler = Recorder()
    promises = [RequestsPromise(Get(f"{fresh_target.url}/hang"), handler, timeout=(1, 0.5))
                for _ in range(3)]
    consumer, provider = run(promises, 3, task_timeout=10)

    assert handler.responses == []
    assert len(handler.errors) == 3
    for error in handler.errors:
        assert isinstance(error.__cause__, requests.exceptions.ReadTimeout), error
        assert error.response is None
    assert all(0.4 <= seconds <= 1.5 for seconds in handler.error_at), handler.error_at
    assert [outcome_of(provider, promise) for promise in promises] == [Status.FAILED] * 3
    assert consumer.pool.free_count() == 3
    assert consumer.in_flight == 0


class CallsTheSessionItself(ResponseHandler):
    """On success, sends a request of its own on ``session``, without a timeout."""

    def __init__(self, session: requests.Session, url: str) -> None:
        self.session = session
        self.url = url
        self.raised: BaseException | None = None
        self.seconds: float | None = None

    def on_success(self, response: requests.Response) -> None:
        started = time.monotonic()
        try:
            self.session.get(self.url)
        except requests.RequestException as error:
            self.raised = error
        self.seconds = time.monotonic() - started

    def on_exception(self, error: PromiseError) -> None:
        raise AssertionError(f"the first request was meant to succeed: {error}")


def test_a_handler_request_without_a_timeout_still_gets_the_session_default(
    fresh_target,
) -> None:
    session = build_session(timeout=(1, 0.5))
    assert isinstance(session.get_adapter(fresh_target.url), DefaultTimeoutAdapter)
    handler = CallsTheSessionItself(session, f"{fresh_target.url}/hang")
    promise = RequestsPromise(Get(f"{fresh_target.url}/ok"), handler, session=session)
    _, provider = run([promise], 1, task_timeout=5)

    assert isinstance(handler.raised, requests.exceptions.ReadTimeout), handler.raised
    assert handler.seconds is not None and 0.4 <= handler.seconds <= 1.5, handler.seconds
    assert outcome_of(provider, promise) is Status.OK


# -- 5. refused connections ---------------------------------------------------------------


def test_a_refused_connection_reaches_on_exception_and_never_turns_into_none(target) -> None:
    refused_url = f"http://127.0.0.1:{unused_loopback_port()}/ok"
    handler = Recorder()
    promises = []
    for index in range(12):
        url = refused_url if index % 2 else f"{target.url}/ok"
        promises.append(RequestsPromise(Get(url), handler, timeout=(1, 2)))
    _, provider = run(promises, 4)

    assert len(handler.responses) + len(handler.errors) == 12
    assert len(handler.responses) == 6
    assert all(isinstance(response, requests.Response) for response in handler.responses)
    assert {response.status_code for response in handler.responses} == {200}
    assert len(handler.errors) == 6
    for error in handler.errors:
        assert isinstance(error.__cause__, requests.ConnectionError), error
        assert error.response is None
    outcomes = [outcome_of(provider, promise) for promise in promises]
    assert outcomes == [Status.OK, Status.FAILED] * 6


# -- 6. name resolution ------------------------------------------------------------------


@pytest.fixture
def stub_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Replace ``socket.getaddrinfo`` (already gevent's) for the test; yields the names asked.

    ``stuck.test`` never answers, ``ok.test`` is 127.0.0.1, the literal 127.0.0.1 goes
    to the real function (a numeric address: no query), anything else does not exist.
    The monkeypatch fixture puts the original back when the test ends.
    """
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, family: int = 0, kind: int = 0, proto: int = 0,
                    flags: int = 0) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        asked.append(name)
        if name == "stuck.test":
            gevent.sleep(3600)
        if name == "ok.test":
            return real("127.0.0.1", port, family, kind, proto, flags)
        if name == "127.0.0.1":
            return real(name, port, family, kind, proto, flags)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (stub)")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield asked


def test_a_name_that_never_resolves_is_ended_by_the_task_timeout(
    target, stub_resolver
) -> None:
    port = target.url.rsplit(":", 1)[1]
    handler = Recorder()

    def promise(host: str) -> RequestsPromise:
        return RequestsPromise(Get(f"http://{host}:{port}/ok"), handler, timeout=(1, 2))

    stuck_first = [promise("stuck.test"), promise("stuck.test")]
    after = [promise("ok.test") for _ in range(5)]
    stuck_late = [promise("stuck.test")]
    last = [promise("ok.test") for _ in range(3)]
    started = time.monotonic()
    _, provider = run(stuck_first + after + stuck_late + last, 2, task_timeout=1)
    seconds = time.monotonic() - started

    assert seconds < 5
    assert len(handler.errors) == 3
    assert all(isinstance(error, TaskTimeout) for error in handler.errors), handler.errors
    assert all(0.9 <= promise.elapsed <= 1.6 for promise in stuck_first + stuck_late)
    for item in stuck_first + stuck_late:
        assert outcome_of(provider, item) is Status.TIMEOUT
    for item in after + last:
        assert outcome_of(provider, item) is Status.OK
    assert len(handler.responses) == 8
    # The two stuck tasks filled both slots; the others could only start once they
    # had timed out, so the consumer went on after its first timeouts.
    assert min(handler.success_at) >= 0.9
    assert set(stub_resolver) == {"stuck.test", "ok.test"}


def test_a_name_that_does_not_exist_is_a_connection_error(target, stub_resolver) -> None:
    port = target.url.rsplit(":", 1)[1]
    handler = Recorder()
    promise = RequestsPromise(Get(f"http://nowhere.test:{port}/ok"), handler, timeout=(1, 2))
    _, provider = run([promise], 1, task_timeout=5)

    assert handler.responses == []
    [error] = handler.errors
    assert isinstance(error.__cause__, requests.ConnectionError), error
    assert "nowhere.test" in str(error)
    assert outcome_of(provider, promise) is Status.FAILED
    assert stub_resolver == ["nowhere.test"]


# -- 7. handlers that raise ---------------------------------------------------------------


class RaisesOnSuccess(Recorder):
    def on_success(self, response: requests.Response) -> None:
        super().on_success(response)
        raise RuntimeError("deliberate trouble in on_success")


class RaisesOnException(Recorder):
    def on_exception(self, error: PromiseError) -> None:
        super().on_exception(error)
        raise RuntimeError("deliberate trouble in on_exception")


@pytest.fixture
def error_records() -> Iterator[list[Any]]:
    """Records of everything loguru's global logger emits at ERROR or above."""
    records: list[Any] = []
    ident = loguru_logger.add(lambda message: records.append(message.record), level="ERROR")
    yield records
    loguru_logger.remove(ident)


def records_about(records: list[Any], promise: Promise) -> list[Any]:
    return [record for record in records if promise.id in record["message"]]


def test_a_handler_that_raises_in_on_success_fails_only_its_own_task(
    target, error_records, capfd
) -> None:
    fine = Recorder()
    troubled = RaisesOnSuccess()
    promises = [RequestsPromise(Get(f"{target.url}/ok"), fine) for _ in range(5)]
    promises.insert(2, RequestsPromise(Get(f"{target.url}/ok"), troubled))
    _, provider = run(promises, 2)

    bad = promises[2]
    assert outcome_of(provider, bad) is Status.ERROR
    assert [outcome_of(provider, item) for item in promises if item is not bad] == [
        Status.OK] * 5
    assert len(fine.responses) == 5
    assert len(troubled.responses) == 1 and troubled.errors == []

    [record] = records_about(error_records, bad)
    assert record["level"].name == "ERROR"
    assert record["exception"] is not None
    assert record["exception"].type is RuntimeError
    assert "failed with" not in capfd.readouterr().err


def test_a_handler_that_raises_in_on_exception_is_logged_and_later_tasks_still_run(
    target, error_records, capfd
) -> None:
    troubled = RaisesOnException()
    fine = Recorder()
    first = RequestsPromise(Get(f"{target.url}/status/500"), troubled)
    later = [RequestsPromise(Get(f"{target.url}/ok"), fine) for _ in range(3)]
    _, provider = run([first, *later], 1)

    assert len(troubled.errors) == 1
    assert outcome_of(provider, first) is Status.ERROR
    assert [outcome_of(provider, item) for item in later] == [Status.OK] * 3
    assert len(fine.responses) == 3

    [record] = records_about(error_records, first)
    assert record["exception"] is not None
    assert record["exception"].type is RuntimeError
    assert "failed with" not in capfd.readouterr().err


# -- 8. streamed responses left unread ----------------------------------------------------


class LeavesTheBodyUnread(ResponseHandler):
    """Reads nothing; notes how much of the body had been read when it was called."""

    def __init__(self, raises: bool, read_so_far: list[int]) -> None:
        self.raises = raises
        self.read_so_far = read_so_far

    def on_success(self, response: requests.Response) -> None:
        self.read_so_far.append(response.raw.tell())
        if self.raises:
            raise RuntimeError("deliberate trouble with an unread body")

    def on_exception(self, error: PromiseError) -> None:
        raise AssertionError(f"unexpected failure: {error}")


def test_unread_streamed_bodies_give_their_connections_back_to_a_blocking_pool(
    target,
) -> None:
    # A Request cannot ask for streaming; the session's own ``stream`` setting can.
    session = build_session(pool_size=3, timeout=(1, 2))
    adapter = DefaultTimeoutAdapter(timeout=(1, 2), pool_connections=3, pool_maxsize=3,
                                    pool_block=True)
    session.mount("http://", adapter)
    session.stream = True
    url = f"{target.url}/bytes/100000"
    read_so_far: list[int] = []
    promises = [
        RequestsPromise(Get(url), LeavesTheBodyUnread(index % 3 == 0, read_so_far),
                        session=session)
        for index in range(12)
    ]
    started = time.monotonic()
    _, provider = run(promises, 6, task_timeout=5)
    seconds = time.monotonic() - started

    assert seconds < 4
    outcomes = [outcome_of(provider, promise) for promise in promises]
    assert outcomes.count(Status.OK) == 8
    assert outcomes.count(Status.ERROR) == 4
    assert read_so_far == [0] * 12
    assert adapter.poolmanager.connection_from_url(url).num_connections <= 3


def test_a_one_mebibyte_body_reaches_the_handler_whole(target) -> None:
    handler = Recorder()
    promise = RequestsPromise(Get(f"{target.url}/bytes/1048576"), handler)
    run([promise], 1)

    [response] = handler.responses
    assert response.content == b"x" * 1048576


# -- 9. results by identity ---------------------------------------------------------------


def test_each_task_sees_its_own_response_whatever_order_they_finish_in(target) -> None:
    zero = time.monotonic()
    paths = {"A": "/delay/300", "B": "/delay/200", "C": "/delay/100"}
    handlers = {name: Recorder(zero) for name in paths}
    promises = [RequestsPromise(Get(f"{target.url}{path}"), handlers[name])
                for name, path in paths.items()]
    run(promises, 3)

    for name, path in paths.items():
        [response] = handlers[name].responses
        assert response.url == f"{target.url}{path}"
    finished = sorted(paths, key=lambda name: handlers[name].success_at[0])
    assert finished == ["C", "B", "A"]


# -- 10. sessions and OS threads ----------------------------------------------------------


def test_shared_session_gives_the_same_session_twice_in_one_greenlet() -> None:
    assert shared_session() is shared_session()


def test_greenlets_of_one_thread_get_the_same_shared_session() -> None:
    here = shared_session()
    elsewhere = gevent.spawn(shared_session).get(timeout=5)
    assert elsewhere is here


def silent_logger() -> logging.Logger:
    """A logger that emits nothing, so it takes no lock shared between OS threads.

    Sinks of loguru and handlers of ``logging`` hold locks that monkey-patching makes
    gevent locks; shared by greenlets of several OS threads, they can miss a wake-up
    and park a task for good (gevent issue 2013; see the report). This test is about
    sessions and consumers per thread, so its consumers do not log.
    """
    silent = logging.getLogger("tests.silent_in_threads")
    silent.propagate = False
    silent.setLevel(logging.CRITICAL)
    silent.isEnabledFor(logging.DEBUG)  # fill the level cache here, in the main thread
    return silent


def test_each_os_thread_has_its_own_session_and_runs_its_own_consumer(target, capfd) -> None:
    silent = silent_logger()
    start_thread = monkey.get_original("_thread", "start_new_thread")
    allocate_lock = monkey.get_original("_thread", "allocate_lock")
    get_ident = monkey.get_original("_thread", "get_ident")
    reports: list[dict] = []

    def work(done: Any) -> None:
        report: dict[str, Any] = {"ident": get_ident()}
        try:
            report["first"] = shared_session()
            report["second"] = shared_session()
            handler = Recorder()
            promises = [RequestsPromise(Get(f"{target.url}/delay/20"), handler)
                        for _ in range(10)]
            _, provider = run(promises, 5, logger=silent)
            report["responses"] = len(handler.responses)
            report["errors"] = [str(error) for error in handler.errors]
            report["outcomes"] = [promise.outcome for promise in provider.settled]
        except BaseException as error:
            report["crash"] = repr(error)
        finally:
            reports.append(report)
            done.release()

    locks = []
    for _ in range(4):
        done = allocate_lock()
        done.acquire()
        locks.append(done)
        start_thread(work, (done,))
    for done in locks:
        assert done.acquire(True, 15), "a worker thread did not finish within 15 s"

    assert len(reports) == 4
    assert [report.get("crash") for report in reports] == [None] * 4
    idents = {report["ident"] for report in reports}
    assert len(idents) == 4 and get_ident() not in idents
    assert all(report["first"] is report["second"] for report in reports)
    sessions = {id(report["first"]) for report in reports} | {id(shared_session())}
    assert len(sessions) == 5
    for report in reports:
        assert report["responses"] == 10 and report["errors"] == []
        assert report["outcomes"] == [Status.OK] * 10
    stderr = capfd.readouterr().err
    assert "LoopExit" not in stderr
    assert "cannot switch to a different thread" not in stderr


# -- 11. keep-alive ----------------------------------------------------------------------


class CountsClientPorts:
    """A WSGI app that notes the client port of every request it answers."""

    def __init__(self) -> None:
        self.ports: set[str] = set()
        self.requests = 0

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        self.ports.add(environ["REMOTE_PORT"])
        self.requests += 1
        gevent.sleep(0.002)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]


@pytest.fixture
def port_counting_server() -> Iterator[tuple[CountsClientPorts, str]]:
    """A loopback server in this process's hub, to see connections from the server side."""
    app = CountsClientPorts()
    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.stop(timeout=1)


@pytest.fixture
def new_connection_lines() -> Iterator[ListHandler]:
    """urllib3's DEBUG records, where it says each time it opens a connection."""
    pool_log = logging.getLogger("urllib3.connectionpool")
    kept = ListHandler()
    level = pool_log.level
    pool_log.addHandler(kept)
    pool_log.setLevel(logging.DEBUG)
    yield kept
    pool_log.removeHandler(kept)
    pool_log.setLevel(level)


@pytest.mark.parametrize("session_kind", [
    "explicit",
    "default",
])
def test_two_hundred_tasks_at_concurrency_twenty_reuse_their_connections(
    port_counting_server, new_connection_lines, session_kind: str
) -> None:
    app, url = port_counting_server
    session = build_session(pool_size=20) if session_kind == "explicit" else None
    handler = Recorder()
    promises = [RequestsPromise(Get(f"{url}/ok"), handler, session=session)
                for _ in range(200)]
    run(promises, 20)

    assert len(handler.responses) == 200 and handler.errors == []
    assert app.requests == 200
    opened = [record for record in new_connection_lines.records
              if record.getMessage().startswith("Starting new HTTP connection")]
    assert len(opened) <= 24, f"{len(opened)} connections opened for 200 requests"
    assert len(app.ports) <= 24, f"the server saw {len(app.ports)} client ports"
