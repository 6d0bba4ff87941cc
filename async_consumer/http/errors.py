"""Translation of ``requests`` failures into the framework's error type, in one place."""

from __future__ import annotations

from typing import Any

import requests

from ..errors import PromiseError, TaskTimeout

#: Answers that mean "try again later" rather than "this request is wrong".
TRANSIENT_STATUS_CODES = frozenset({429, 502, 503, 504})


class BodyTooLarge(PromiseError):
    """A response body went past the promise's ``max_body_bytes``."""


def to_promise_error(error: BaseException, promise: Any = None) -> PromiseError:
    """Wrap a ``requests``/``urllib3`` error; the original stays as ``__cause__``."""
    response = getattr(error, "response", None)
    if isinstance(error, requests.HTTPError) and response is not None:
        message = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    else:
        message = f"{type(error).__name__}: {error}"

    wrapped = PromiseError(message, promise=promise, response=response)
    wrapped.__cause__ = error
    return wrapped


def is_transient(error: PromiseError) -> bool:
    """Whether trying the same request again later may well succeed.

    True for connection failures (but not TLS verification failures, which the same
    request will meet again), connections closed in the middle of a response,
    timeouts (the HTTP client's or the task's own) and the answers 429, 502, 503 and
    504.
    """
    if isinstance(error, TaskTimeout):
        return True

    response = error.response
    if response is not None:
        return response.status_code in TRANSIENT_STATUS_CODES

    cause = error.__cause__
    if isinstance(cause, requests.exceptions.SSLError):
        return False
    return isinstance(cause, (requests.ConnectionError, requests.Timeout,
                              requests.exceptions.ChunkedEncodingError))
