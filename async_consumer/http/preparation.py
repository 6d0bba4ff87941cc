"""Turning a ``requests.Request`` into a ``PreparedRequest``, cheaply.

``Session.prepare_request`` costs a few hundred microseconds, more than sending the
request on a kept-alive connection: it merges settings through generic helpers,
looks for a ``.netrc`` file on every call and parses the same URL again and again.
:func:`prepare` builds the same ``PreparedRequest`` for the common case (no files,
no auth, no cookies, no hooks) from requests' own pieces, with the URL parsing
cached, and hands everything else to ``Session.prepare_request`` untouched. A test
checks both paths give the same method, URL, headers and body over a range of
request shapes.

Note:
    Whether a ``.netrc`` file exists is looked up once per process (requests looks
    on every request): a file created while a worker runs is used after a restart.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any

import requests
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity

URL_CACHE_SIZE = 4096
#: Sessions whose validated headers are kept; the cache is emptied past that.
SESSION_CACHE_SIZE = 64
NETRC_LOCATIONS = ("~/.netrc", "~/_netrc")


def prepare(
    session: requests.Session, request: requests.Request | requests.PreparedRequest
) -> requests.PreparedRequest:
    """The request ``session.prepare_request`` would build, built faster when possible."""
    if isinstance(request, requests.PreparedRequest):
        return request
    if not isinstance(request, requests.Request):
        raise TypeError(
            f"RequestFactory.create() must return a requests.Request or PreparedRequest, "
            f"not {type(request).__name__}"
        )
    if not _is_plain(session, request):
        return session.prepare_request(request)

    prepared = _PlainPreparedRequest()
    prepared.method = (request.method or "").upper()
    params = _merged_params(session, request)
    if params:
        prepared.prepare_url(request.url, params)
    else:
        prepared.url = _prepared_url(request.url)
    prepared.headers = _merged_headers(session, request)
    _prepare_body(prepared, request)
    prepared.hooks = default_hooks()
    return prepared


class _PlainPreparedRequest(requests.PreparedRequest):
    """A ``PreparedRequest`` whose (empty) cookie jar is made on first use: a jar costs a
    lock, and a plain request only needs one if it is redirected or copied."""

    @property
    def _cookies(self) -> RequestsCookieJar:
        jar = self.__dict__.get("_cookie_jar")
        if jar is None:
            jar = self.__dict__["_cookie_jar"] = RequestsCookieJar()
        return jar

    @_cookies.setter
    def _cookies(self, jar: RequestsCookieJar) -> None:
        self.__dict__["_cookie_jar"] = jar


def _prepare_body(prepared: requests.PreparedRequest, request: requests.Request) -> None:
    """requests' own body preparation, skipped for the common request without a body."""
    if request.data or request.json is not None:
        prepared.body = None
        prepared.prepare_body(request.data, None, request.json)
        return

    prepared.body = None
    if prepared.method not in ("GET", "HEAD") and "Content-Length" not in prepared.headers:
        prepared.headers["Content-Length"] = "0"


def _is_plain(session: requests.Session, request: requests.Request) -> bool:
    """No files, auth, cookies or hooks anywhere, and no credentials in the URL."""
    if request.files or request.auth or session.auth:
        return False
    # A jar's len() walks every cookie under a lock; its dict of domains is empty
    # whenever it holds no cookie, which is the case this path is for.
    if request.cookies or session.cookies._cookies:  # type: ignore[attr-defined]
        return False
    if any(request.hooks.values()) or any(session.hooks.values()):
        return False
    if isinstance(request.data, (dict, list, tuple)) and request.data:
        return False
    if not isinstance(request.url, str) or "@" in request.url.partition("?")[0]:
        return False
    return not (session.trust_env and _netrc_present())


#: id(session) -> (the session's header items, the same validated once).
_validated_headers: dict[int, tuple[tuple, CaseInsensitiveDict]] = {}


@functools.lru_cache(maxsize=1)
def _netrc_present() -> bool:
    if os.environ.get("NETRC"):
        return True
    return any(os.path.exists(os.path.expanduser(path)) for path in NETRC_LOCATIONS)


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _prepared_url(url: str) -> str:
    """requests' own URL preparation (IDNA, quoting, checks), once per distinct URL."""
    scratch = requests.PreparedRequest()
    scratch.prepare_url(url, None)
    return scratch.url or ""


def _merged_params(session: requests.Session, request: requests.Request) -> Any:
    if not session.params:
        return request.params
    if not request.params:
        return session.params
    merged = dict(session.params)  # type: ignore[arg-type]
    merged.update(request.params)
    return {key: value for key, value in merged.items() if value is not None}


def _merged_headers(session: requests.Session, request: requests.Request) -> CaseInsensitiveDict:
    """Session headers overridden by the request's; a header set to None is dropped."""
    headers = _copy(_session_headers(session))
    for name, value in (request.headers or {}).items():
        if value is None:
            headers.pop(name, None)
            continue
        check_header_validity((name, value))  # type: ignore[type-var]
        headers[name if isinstance(name, str) else name.decode("ascii")] = value
    return headers


def _session_headers(session: requests.Session) -> CaseInsensitiveDict:
    """The session's headers, validated once for as long as they stay the same."""
    current = tuple(session.headers._store.values())  # type: ignore[attr-defined]
    cached = _validated_headers.get(id(session))
    if cached is not None and cached[0] == current:
        return cached[1]

    validated: CaseInsensitiveDict = CaseInsensitiveDict()
    for name, value in current:
        if value is None:
            continue
        check_header_validity((name, value))  # type: ignore[type-var]
        validated[name if isinstance(name, str) else name.decode("ascii")] = value
    if len(_validated_headers) >= SESSION_CACHE_SIZE:
        _validated_headers.clear()
    _validated_headers[id(session)] = (current, validated)
    return validated


def _copy(headers: CaseInsensitiveDict) -> CaseInsensitiveDict:
    """A copy without going through the generic Mapping machinery (it is hot)."""
    return headers_from_store(collections.OrderedDict(headers._store))  # type: ignore


def headers_from_store(store: collections.OrderedDict) -> CaseInsensitiveDict:
    """A CaseInsensitiveDict around ``store`` (lower name -> (name, value)), built
    without its generic constructor, which is slow enough to matter per request."""
    headers: CaseInsensitiveDict = CaseInsensitiveDict.__new__(CaseInsensitiveDict)
    headers._store = store  # type: ignore[attr-defined]
    return headers
