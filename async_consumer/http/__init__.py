"""HTTP tasks: a promise that sends one request with ``requests`` on a pooled session.

Importing this module imports ``requests`` (and so ``ssl``): in a process that
monkey-patches, patch first.
"""

from .errors import TRANSIENT_STATUS_CODES, is_transient, to_promise_error
from .promise import RequestFactory, RequestsPromise, ResponseHandler
from .session import DefaultTimeoutAdapter, build_session, shared_session

__all__ = [
    "TRANSIENT_STATUS_CODES",
    "DefaultTimeoutAdapter",
    "RequestFactory",
    "RequestsPromise",
    "ResponseHandler",
    "build_session",
    "is_transient",
    "shared_session",
    "to_promise_error",
]
