"""The HTTP job format: one JSON object per line, checked before it is accepted.

A job names one request::

    {"id": "order-17", "method": "POST", "url": "http://127.0.0.1:8080/hook",
     "headers": {"X-Key": "k"}, "json": {"order": 17}, "timeout": 10, "max_attempts": 3}

Only ``url`` is required. A job that is accepted is stored exactly as checked, so
that a worker never meets a job it cannot run.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import AsyncConsumerError
from .redaction import redact_text

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
JOB_KEYS = ("id", "method", "url", "headers", "params", "json", "data", "timeout",
            "max_attempts")
MAX_ATTEMPTS_LIMIT = 1000
MAX_TIMEOUT_SECONDS = 86400.0
#: Distinct URLs whose check is remembered; webhook jobs repeat a few URLs many times.
URL_CACHE_SIZE = 4096
#: Longer URLs are checked every time, so the cache stays a few megabytes at most.
URL_CACHE_MAX_LENGTH = 2048
_JOB_KEY_SET = frozenset(JOB_KEYS)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNSAFE_URL_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")


class JobError(AsyncConsumerError, ValueError):
    """A job line is not a valid HTTP job; the message says where and why."""

    def __init__(self, reason: str, line_number: int | None = None) -> None:
        self.reason = reason
        self.line_number = line_number
        prefix = f"line {line_number}: " if line_number is not None else ""
        super().__init__(prefix + reason)


@dataclass(frozen=True)
class HttpJob:
    """One HTTP request to make, as accepted from a job line."""

    url: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    method: str = "GET"
    headers: dict[str, str] | None = None
    params: dict[str, Any] | None = None
    json: Any = None
    data: str | None = None
    timeout: float | list[float] | None = None
    max_attempts: int | None = None
    has_json: bool = False

    def to_payload(self) -> str:
        """The JSON text stored in the queue."""
        record = {key: value for key, value in asdict(self).items()
                  if value is not None and key != "has_json"}
        if self.has_json:
            record["json"] = self.json
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_payload(cls, payload: str | bytes) -> HttpJob:
        """Read a stored job back; raises :class:`JobError` if it is not one."""
        try:
            record = decode_json(payload)
        except (ValueError, UnicodeDecodeError) as error:
            raise JobError(f"not JSON: {error}") from None
        return parse_job(record)


def parse_job(record: Any) -> HttpJob:
    """Check a decoded job object and return it as an :class:`HttpJob`."""
    if not isinstance(record, dict):
        raise JobError(f"a job must be a JSON object, not {type(record).__name__}")

    if not _JOB_KEY_SET.issuperset(record):
        unknown = sorted(set(record) - _JOB_KEY_SET)
        raise JobError(f"unknown key(s) {', '.join(unknown)}; a job may have "
                       f"{', '.join(JOB_KEYS)}")
    has_json = "json" in record
    if has_json and "data" in record:
        raise JobError("give either 'json' or 'data', not both")

    get = record.get
    return _checked_job({
        "url": _check_url(get("url")),
        "id": _check_id(get("id")),
        "method": _check_method(get("method", "GET")),
        "headers": _check_headers(get("headers")),
        "params": _check_params(get("params")),
        "json": get("json"),
        "data": _check_data(get("data")),
        "timeout": _check_timeout(get("timeout")),
        "max_attempts": _check_max_attempts(get("max_attempts")),
        "has_json": has_json,
    })


def _checked_job(fields: dict[str, Any]) -> HttpJob:
    """An :class:`HttpJob` from values :func:`parse_job` has already checked.

    A worker parses every job it runs, so this skips the frozen dataclass's
    ``__init__``, which sets each of the ten fields through ``object.__setattr__``
    and costs about as much as all the checks of a plain job together.
    """
    job = object.__new__(HttpJob)
    job.__dict__.update(fields)
    return job


def parse_job_lines(lines: Iterable[str]) -> Iterator[HttpJob]:
    """Parse JSON lines; blank lines are skipped, the first bad one raises with its number."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = decode_json(line)
        except ValueError as error:
            raise JobError(f"not valid JSON ({error})", number) from None
        try:
            yield parse_job(record)
        except JobError as error:
            raise JobError(error.reason, number) from None


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise JobError("'url' is required: an http:// or https:// address")
    if len(url) > URL_CACHE_MAX_LENGTH:
        return _checked_url.__wrapped__(url)
    return _checked_url(url)


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _checked_url(url: str) -> str:
    """The URL checks, remembered per URL: a bad URL raises and is not remembered."""
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as error:
        raise JobError(f"'url' is not a valid address ({error}): {redact_text(url)!r}") \
            from None

    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobError("'url' must be an absolute http:// or https:// address, "
                       f"not {redact_text(url)!r}")
    if _UNSAFE_URL_CHARACTERS.search(url):
        raise JobError(f"'url' contains spaces or control characters: {redact_text(url)!r}")
    return url


def _check_id(value: Any) -> str:
    if value is None:
        return uuid.uuid4().hex
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise JobError(f"'id' must be a non-empty string or an integer, not {value!r}")
    return str(value)


def _check_method(value: Any) -> str:
    method = value.upper() if isinstance(value, str) else value
    if method not in HTTP_METHODS:
        raise JobError(f"'method' must be one of {', '.join(sorted(HTTP_METHODS))}, "
                       f"not {value!r}")
    return method


def _check_headers(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise JobError("'headers' must be an object of string names to string values")
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise JobError(f"header name {name!r} is not a valid HTTP token")
        if _UNSAFE_HEADER_VALUE.search(text):
            raise JobError(f"header {name!r} has a line break or control character")
    return value


def _check_params(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        _is_query_value(item) for item in value.values()
    ):
        raise JobError("'params' must be an object whose values are strings, numbers, "
                       "booleans or lists of them")
    return value


def _is_query_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(item, (str, int, float, bool)) for item in value)
    return isinstance(value, (str, int, float, bool))


def _check_data(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise JobError("'data' must be a string (use 'json' for structured bodies)")


def _check_timeout(value: Any) -> float | list[float] | None:
    if value is None:
        return None
    if _is_positive_number(value):
        return float(value)
    if isinstance(value, list) and len(value) == 2 and all(map(_is_positive_number, value)):
        return [float(value[0]), float(value[1])]
    raise JobError(f"'timeout' must be seconds from 0 to {MAX_TIMEOUT_SECONDS:g}, or "
                   f"[connect, read], not {value!r}")


def _check_max_attempts(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (
        1 <= value <= MAX_ATTEMPTS_LIMIT
    ):
        raise JobError(f"'max_attempts' must be a whole number from 1 to "
                       f"{MAX_ATTEMPTS_LIMIT}, not {value!r}")
    return value


def _is_positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value <= MAX_TIMEOUT_SECONDS)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def decode_json(text: str | bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused, deep nesting is an error, not a crash.

    Text goes straight to one shared decoder (``json.loads`` with an argument builds a
    new decoder on every call); bytes and a leading BOM take ``json.loads``' path,
    which detects the encoding and reports the BOM.
    """
    try:
        if type(text) is str and not text.startswith("\ufeff"):
            return _DECODER.decode(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
