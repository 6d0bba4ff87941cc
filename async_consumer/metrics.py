"""Prometheus metrics and health checks over HTTP, served from the worker process.

Nothing here runs unless ``[metrics] enabled = true``: the consumer's per-task hook
stays ``None`` and a task costs what it always did. When enabled, a settled task
costs a few dictionary updates and two bisections (see :class:`TaskMetrics`);
everything else (queue depth, in flight, the provider's delivery counts) is read
when Prometheus scrapes, not while tasks run.

The endpoint is a gevent ``WSGIServer`` in the worker's own hub, so a scrape that
hangs means the hub is blocked, which is itself what ``/healthz`` is there to show.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from .delivery import DeliveryCounts
from .promise import Promise

#: Upper bounds of the duration buckets, in seconds (``+Inf`` is added).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0)
#: The series every host beyond ``top_hosts`` is counted in.
OTHER_HOST = "other"
#: ``/healthz`` fails once the consumer loop has not ticked for this long.
HEALTHY_TICK_AGE_SECONDS = 5.0
#: ``/readyz`` fails for this long after the provider failed to deliver work.
UNREADY_AFTER_FETCH_ERROR_SECONDS = 10.0
PREFIX = "async_consumer"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Counts in fixed buckets, a sum and a count: what a Prometheus histogram needs."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> Iterable[str]:
        """The ``_bucket``/``_sum``/``_count`` lines, buckets cumulative."""
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            yield f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {running}'
        braces = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{braces} {_number(self.sum)}"
        yield f"{name}_count{braces} {self.count}"


class TaskMetrics:
    """What the consumer's ``on_settled`` hook records for every task.

    Hosts get series of their own in the order they are first seen, up to
    ``top_hosts``; later hosts share the ``other`` series. A host never moves between
    series, so every counter only ever grows, as Prometheus requires, and the number
    of series stays bounded whatever URLs the jobs carry.
    """

    def __init__(self, top_hosts: int) -> None:
        self.top_hosts = top_hosts
        # Keyed by the Status itself: reading ``.value`` per task costs more than the
        # rest of the recording; it is read at scrape time instead.
        self.by_outcome: dict[Any, int] = {}
        self.by_host: dict[tuple[str, Any], int] = {}
        self.hosts: set[str] = set()
        self.task_seconds = Histogram()
        self.http_seconds = Histogram()

    def record(self, promise: Promise) -> None:
        """The hook: called once per settled promise, in the task's greenlet."""
        outcome = promise.outcome
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        self.task_seconds.observe(promise.elapsed)

        job = getattr(promise, "job", None)
        if job is None:
            return
        key = (self._host_series(job.url), outcome)
        self.by_host[key] = self.by_host.get(key, 0) + 1
        elapsed = getattr(getattr(promise, "response", None), "elapsed", None)
        if elapsed is not None:
            self.http_seconds.observe(elapsed.total_seconds())

    def _host_series(self, url: str) -> str:
        host = urlsplit(url).hostname or "?"
        if host in self.hosts:
            return host
        if len(self.hosts) < self.top_hosts:
            self.hosts.add(host)
            return host
        return OTHER_HOST


class Exposition:
    """Renders the Prometheus text format from a consumer, its provider and its hook."""

    def __init__(self, consumer: Any, task_metrics: TaskMetrics) -> None:
        self.consumer = consumer
        self.tasks = task_metrics

    def render(self) -> str:
        lines: list[str] = []
        consumer, tasks = self.consumer, self.tasks

        _family(lines, "tasks_total", "counter", "Tasks that ended, by outcome.",
                sorted((f'outcome="{outcome.value}"', count)
                       for outcome, count in tasks.by_outcome.items()))
        _family(lines, "http_requests_total", "counter",
                "HTTP jobs that ended, by target host (bounded; see top_hosts) and outcome.",
                sorted((f'host="{_escape(host)}",outcome="{outcome.value}"', count)
                       for (host, outcome), count in tasks.by_host.items()))
        self._delivery_counts(lines)

        _histogram(lines, "task_duration_seconds", "How long tasks ran, handlers included.",
                   tasks.task_seconds)
        _histogram(lines, "http_request_duration_seconds",
                   "Time from sending an HTTP request to its response headers.",
                   tasks.http_seconds)

        _family(lines, "tasks_in_flight", "gauge", "Tasks running or queued for a worker.",
                [("", consumer.in_flight)])
        _family(lines, "concurrency", "gauge", "How many tasks may run at once.",
                [("", consumer.concurrency)])
        depth = _queue_depth(consumer.provider)
        if depth is not None:
            _family(lines, "queue_depth", "gauge", "Messages waiting in the queue.",
                    [("", depth)])
        age = time.monotonic() - consumer.last_tick if consumer.last_tick else -1
        _family(lines, "loop_tick_age_seconds", "gauge",
                "Seconds since the consumer loop last ticked (-1: not started).",
                [("", round(age, 3))])
        return "\n".join(lines) + "\n"

    def _delivery_counts(self, lines: list[str]) -> None:
        counts = getattr(self.consumer.provider, "counts", None)
        if not isinstance(counts, DeliveryCounts):
            return
        _family(lines, "retries_total", "counter", "Deliveries scheduled for another attempt.",
                [("", counts.retried)])
        _family(lines, "dead_lettered_total", "counter",
                "Jobs dead-lettered after their last attempt.", [("", counts.dead_lettered)])
        _family(lines, "requeued_total", "counter",
                "Jobs put back without spending an attempt (shutdown).", [("", counts.requeued)])


def health(consumer: Any) -> tuple[bool, str]:
    """Whether the consumer loop is alive: it ticked recently."""
    if not consumer.last_tick:
        return False, "the consumer has not started"
    age = time.monotonic() - consumer.last_tick
    if age > HEALTHY_TICK_AGE_SECONDS:
        return False, f"the consumer loop last ticked {age:.1f}s ago"
    return True, f"the consumer loop ticked {age:.2f}s ago"


def readiness(consumer: Any) -> tuple[bool, str]:
    """Whether the worker takes work: started, not stopping, its provider delivering.

    A provider with a ``connected`` attribute is asked; otherwise a recent failure to
    fetch work counts as "not connected".
    """
    if not consumer.last_tick:
        return False, "the consumer has not started"
    if consumer.stopping:
        return False, "the consumer is stopping"
    connected = getattr(consumer.provider, "connected", None)
    if connected is False:
        return False, "the provider is not connected"
    since_error = time.monotonic() - consumer.last_fetch_error
    if consumer.last_fetch_error and since_error < UNREADY_AFTER_FETCH_ERROR_SECONDS:
        return False, f"the provider failed to deliver work {since_error:.1f}s ago"
    return True, f"consuming from {consumer.provider.describe()}"


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a gevent WSGI server."""

    def __init__(self, consumer: Any, host: str, port: int, top_hosts: int) -> None:
        from gevent.pywsgi import WSGIServer

        self.consumer = consumer
        self.task_metrics = TaskMetrics(top_hosts)
        self.exposition = Exposition(consumer, self.task_metrics)
        self.server = WSGIServer((host, port), self._application, log=None)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[:2]

    def start(self) -> None:
        """Listen, and hook the per-task recording into the consumer."""
        self.server.start()
        self.consumer.on_settled = self.task_metrics.record

    def stop(self) -> None:
        self.consumer.on_settled = None
        self.server.stop(timeout=1)

    def _application(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return _answer(start_response, True, self.exposition.render(), CONTENT_TYPE)
        if path == "/healthz":
            return _answer(start_response, *health(self.consumer))
        if path == "/readyz":
            return _answer(start_response, *readiness(self.consumer))
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /metrics, /healthz or /readyz\n"]


def _answer(start_response: Callable, ok: bool, text: str,
            content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    body = (text if text.endswith("\n") else text + "\n").encode("utf-8")
    start_response("200 OK" if ok else "503 Service Unavailable",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _queue_depth(provider: Any) -> int | None:
    """The provider's queue depth; a provider that fails to tell is left out."""
    try:
        return provider.queue_depth()
    except Exception:
        return None


def _family(lines: list[str], name: str, kind: str, help_text: str,
            samples: list[tuple[str, float]]) -> None:
    full = f"{PREFIX}_{name}"
    lines.append(f"# HELP {full} {help_text}")
    lines.append(f"# TYPE {full} {kind}")
    for labels, value in samples:
        lines.append(f"{full}{{{labels}}} {_number(value)}" if labels
                     else f"{full} {_number(value)}")


def _histogram(lines: list[str], name: str, help_text: str, histogram: Histogram) -> None:
    full = f"{PREFIX}_{name}"
    lines.append(f"# HELP {full} {help_text}")
    lines.append(f"# TYPE {full} histogram")
    lines.extend(histogram.lines(full))


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
