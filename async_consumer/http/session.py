"""The shared, pooled ``requests`` session the HTTP promise sends with.

One session per OS thread: a gevent socket belongs to the hub of the thread that
made it, so sharing pooled connections across threads ends in "cannot switch to a
different thread". Within a thread, every promise shares the session, so
connections are kept alive and reused.
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .. import __version__

DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_READ_TIMEOUT_SECONDS = 30.0
DEFAULT_TIMEOUT = (DEFAULT_CONNECT_TIMEOUT_SECONDS, DEFAULT_READ_TIMEOUT_SECONDS)
#: Pool size used when no consumer tells how many requests run at once.
DEFAULT_POOL_SIZE = 10
DEFAULT_USER_AGENT = f"async-consumer/{__version__}"

Timeout = Any  # a number, a (connect, read) tuple, or None where explicitly allowed


class DefaultTimeoutAdapter(HTTPAdapter):
    """An adapter that applies a timeout to every request that did not set one.

    ``requests`` waits forever by default; with this adapter mounted, even a handler
    that calls ``session.get(url)`` itself cannot park its greenlet for good.
    """

    def __init__(self, timeout: Timeout = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        self.default_timeout = timeout
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, *args, **kwargs)


def build_session(
    pool_size: int = DEFAULT_POOL_SIZE,
    timeout: Timeout = DEFAULT_TIMEOUT,
    verify: bool | str = True,
    user_agent: str = DEFAULT_USER_AGENT,
    keep_cookies: bool = False,
) -> requests.Session:
    """A session whose pool keeps ``pool_size`` connections per host.

    The pool must be at least as large as the number of requests in flight to one
    host, or urllib3 discards the extra connections ("Connection pool is full") and
    keep-alive is lost.

    Unless ``keep_cookies`` is set, the session's own jar keeps no cookie: the tasks
    that share it are unrelated (one customer's webhook must not carry a cookie
    another customer's server set). ``response.cookies`` still holds what each
    answer set, and the hops of one redirect still carry the cookies set on the way.
    """
    session = requests.Session()
    session.verify = verify
    session.headers["User-Agent"] = user_agent
    if not keep_cookies:
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    mount_pool(session, pool_size, timeout)
    return session


def mount_pool(session: requests.Session, pool_size: int, timeout: Timeout) -> None:
    adapter = DefaultTimeoutAdapter(
        timeout=timeout, pool_connections=max(pool_size, 1), pool_maxsize=max(pool_size, 1)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _os_thread_local_class() -> type:
    """``threading.local`` as it was before patching.

    Once gevent has patched ``threading``, ``threading.local`` is per greenlet: every
    task would get its own session and no connection would ever be reused.
    """
    from gevent import monkey

    return monkey.get_original("threading", "local")


class _ThreadSessions(_os_thread_local_class()):  # type: ignore[misc]
    session: requests.Session | None = None
    pool_size: int = 0
    transport: Any = None


_sessions = _ThreadSessions()


def shared_session(pool_size: int = DEFAULT_POOL_SIZE) -> requests.Session:
    """This thread's shared session, its pool grown to at least ``pool_size``."""
    if _sessions.session is None:
        _sessions.session = build_session(pool_size)
        _sessions.pool_size = pool_size
    elif pool_size > _sessions.pool_size:
        mount_pool(_sessions.session, pool_size, DEFAULT_TIMEOUT)
        _sessions.pool_size = pool_size
    return _sessions.session


def shared_transport(pool_size: int = DEFAULT_POOL_SIZE) -> Any:
    """This thread's fast transport, allowing ``pool_size`` connections per origin."""
    transport = _sessions.transport
    if transport is None:
        from .transport import FastTransport

        transport = _sessions.transport = FastTransport(pool_size)
    elif pool_size > transport.pool_size:
        transport.grow(pool_size)
    return transport
