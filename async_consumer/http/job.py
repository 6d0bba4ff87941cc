"""The built-in task of the daemon: one :class:`~async_consumer.jobs.HttpJob` request."""

from __future__ import annotations

from typing import Any

import requests

from ..backoff import parse_retry_after
from ..errors import PromiseError, RetryLater
from ..jobs import HttpJob
from .errors import is_transient
from .promise import RequestFactory, RequestsPromise, ResponseHandler
from .session import Timeout


class JobRequestFactory(RequestFactory):
    """Turns a job's fields into a ``requests.Request``."""

    def __init__(self, job: HttpJob) -> None:
        self.job = job

    def create(self) -> requests.Request:
        job = self.job
        headers = dict(job.headers or {})
        data: str | None = job.data
        body_json = job.json if job.has_json else None
        if job.has_json and job.json is None:
            # requests reads json=None as "no body"; the job asked for a JSON null.
            data = "null"
            headers.setdefault("Content-Type", "application/json")
        return requests.Request(
            job.method, job.url, headers=headers, params=job.params, json=body_json, data=data,
        )


class JobResultHandler(ResponseHandler):
    """Remembers what happened and asks for a retry when a failure is transient.

    Connection errors, timeouts and the answers 429, 502, 503 and 504 are retried,
    honouring a ``Retry-After`` header; any other failure is final.
    """

    def __init__(self) -> None:
        self.status_code: int | None = None
        self.error: str | None = None

    def on_success(self, response: requests.Response) -> None:
        self.status_code = response.status_code

    def on_exception(self, error: PromiseError) -> None:
        response = error.response
        self.status_code = response.status_code if response is not None else None
        self.error = str(error)
        if is_transient(error):
            retry_after = response.headers.get("Retry-After") if response is not None else None
            raise RetryLater(self.error, parse_retry_after(retry_after))


class HttpJobPromise(RequestsPromise):
    """A :class:`RequestsPromise` for one queued HTTP job."""

    def __init__(
        self,
        job: HttpJob,
        session: requests.Session | None,
        timeout: Timeout,
        raise_for_status: bool = True,
        max_body_bytes: int | None = None,
        transport: str = "auto",
    ) -> None:
        self.job = job
        self.outcome_handler = JobResultHandler()
        job_timeout = tuple(job.timeout) if isinstance(job.timeout, list) else job.timeout
        super().__init__(
            JobRequestFactory(job),
            self.outcome_handler,
            session=session,
            timeout=job_timeout or timeout,
            raise_for_status=raise_for_status,
            max_body_bytes=max_body_bytes,
            transport=transport,
            task_id=job.id,
        )

    def result_fields(self) -> dict[str, Any]:
        return {"status_code": self.outcome_handler.status_code}

    def describe(self) -> str:
        if self.request is None:
            return f"{self.job.method} {self.job.url}"
        return super().describe()
