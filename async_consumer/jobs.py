"""The HTTP job format: one JSON object per line, checked before it is accepted.

A job names one request::

    {"id": "order-17", "method": "POST", "url": "http://127.0.0.1:8080/hook",
     "headers": {"X-Key": "k"}, "json": {"order": 17}, "timeout": 10, "max_attempts": 3}

Only ``url`` is required. A job that is accepted is stored exactly as checked, so
that a worker never meets a job it cannot run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import AsyncConsumerError

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
JOB_KEYS = ("id", "method", "url", "headers", "params", "json", "data", "timeout",
            "max_attempts")
MAX_ATTEMPTS_LIMIT = 1000


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
            record = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as error:
            raise JobError(f"not JSON: {error}") from None
        return parse_job(record)


def parse_job(record: Any) -> HttpJob:
    """Check a decoded job object and return it as an :class:`HttpJob`."""
    if not isinstance(record, dict):
        raise JobError(f"a job must be a JSON object, not {type(record).__name__}")

    unknown = sorted(set(record) - set(JOB_KEYS))
    if unknown:
        raise JobError(f"unknown key(s) {', '.join(unknown)}; a job may have "
                       f"{', '.join(JOB_KEYS)}")
    if "json" in record and "data" in record:
        raise JobError("give either 'json' or 'data', not both")

    return HttpJob(
        url=_check_url(record.get("url")),
        id=_check_id(record.get("id")),
        method=_check_method(record.get("method", "GET")),
        headers=_check_headers(record.get("headers")),
        params=_check_params(record.get("params")),
        json=record.get("json"),
        data=_check_data(record.get("data")),
        timeout=_check_timeout(record.get("timeout")),
        max_attempts=_check_max_attempts(record.get("max_attempts")),
        has_json="json" in record,
    )


def parse_job_lines(lines: Iterable[str]) -> Iterator[HttpJob]:
    """Parse JSON lines; blank lines are skipped, the first bad one raises with its number."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise JobError(f"not valid JSON ({error})", number) from None
        try:
            yield parse_job(record)
        except JobError as error:
            raise JobError(error.reason, number) from None


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise JobError("'url' is required: an http:// or https:// address")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobError(f"'url' must be an absolute http:// or https:// address, not {url!r}")
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
    return value


def _check_params(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise JobError("'params' must be an object of query parameters")
    return value


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
    raise JobError(f"'timeout' must be seconds > 0 or [connect, read], not {value!r}")


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
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
