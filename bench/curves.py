"""Scenario 6: throughput against concurrency, and against worker processes.

Concurrency: each client sends GETs to ``/delay/20`` on the delay server (gevent's WSGI
server, no pool limit, so it really holds 1,000 requests at once). At concurrency C
and 20 ms per answer the ceiling is C / 0.02 jobs/s; the curve shows where each
client leaves it. Processes: the end-to-end job on Redis with 1, 2, ... workers.
"""

from __future__ import annotations

from typing import Any

from bench.core import Column, Context, Series, Table, interleave
from bench.e2e import Job, job_key, job_variant
from bench.scenarios import client_variant

DELAY_MS = 20
#: Requests per point: enough for 20 rounds of the window, within these bounds.
ROUNDS = 20
MIN_REQUESTS = 100
MAX_REQUESTS = 6000
#: gevent + requests is CPU-bound at a few hundred requests/s; it runs a quarter of the
#: requests (never fewer than MIN_REQUESTS) so that a point takes seconds, not minutes.
REQUESTS_SHARE = 4


def requests_for(concurrency: int, smoke: bool) -> int:
    if smoke:
        return max(20, min(concurrency * 2, 400))
    return max(MIN_REQUESTS, min(concurrency * ROUNDS, MAX_REQUESTS))


def merge(points: dict[Any, list[Series]], metric: str) -> list[Series]:
    """One series per variant whose samples carry ``metric_<point>`` for every point."""
    merged: dict[str, Series] = {}
    for point, series_list in points.items():
        for series in series_list:
            target = merged.setdefault(series.key, Series(series.key, series.label))
            target.failures += [f"at {point}: {f}" for f in series.failures]
            for index, sample in enumerate(series.samples):
                while len(target.samples) <= index:
                    target.samples.append({})
                target.samples[index][f"{metric}_{point}"] = sample[metric]
    return list(merged.values())


def run_concurrency(ctx: Context) -> Table:
    o = ctx.options
    url = f"{ctx.delay_url}/delay/{DELAY_MS}"
    points: dict[Any, list[Series]] = {}
    for c in o.curve_concurrency:
        n = requests_for(c, o.smoke)
        variants = [
            client_variant(ctx, "ac-fast", "async_consumer, transport=fast",
                           "async_consumer", url, n, c, "--transport", "fast"),
            client_variant(ctx, "aiohttp", "aiohttp (one session, semaphore C)", "aiohttp",
                           url, n, c),
            client_variant(ctx, "gevent-requests", "gevent + requests (session pool C)",
                           "gevent-requests", url, max(min(n, MIN_REQUESTS),
                                                       n // REQUESTS_SHARE), c),
        ]
        points[c] = interleave(variants, o.curve_repeat, f"concurrency {c}")

    series = merge(points, "rate")
    series.append(Series("ceiling", f"ceiling: C / {DELAY_MS} ms (computed)",
                         [{f"rate_{c}": c * 1000 / DELAY_MS for c in o.curve_concurrency}]))
    sizes = ", ".join(f"{c}: {requests_for(c, o.smoke):,}" for c in o.curve_concurrency)
    return Table(
        "concurrency", f"6a. Requests/s against concurrency, {DELAY_MS} ms per answer "
        "(delay server)",
        f"python -m bench --only concurrency --curve-repeat {o.curve_repeat} "
        f"--curve-concurrency {','.join(map(str, o.curve_concurrency))}",
        [Column(f"C={c}", f"rate_{c}", show_range=False) for c in o.curve_concurrency],
        series,
        notes=[f"Requests per point (C: requests): {sizes}; gevent + requests runs a "
               f"quarter of them (at least {MIN_REQUESTS}). Medians of {o.curve_repeat} "
               "interleaved runs."],
    )


def run_workers(ctx: Context) -> Table:
    o = ctx.options
    points: dict[Any, list[Series]] = {}
    for count in o.curve_workers:
        jobs = [Job("ac", "redis", o.curve_jobs, o.e2e_concurrency, ctx.nginx_url, count),
                Job("dramatiq", "redis", o.curve_jobs, o.e2e_concurrency, ctx.nginx_url,
                    count)]
        variants = [job_variant(ctx, job, job_key(job).rsplit("-p", 1)[0], _label(job))
                    for job in jobs]
        points[count] = interleave(variants, o.workers_repeat, f"{count} worker(s)")

    series = merge(points, "rate")
    return Table(
        "workers", f"6b. Jobs/s against worker processes (end to end on Redis, "
        f"{o.curve_jobs:,} jobs, concurrency {o.e2e_concurrency} per process)",
        f"python -m bench --only workers --workers-repeat {o.workers_repeat} "
        f"--curve-jobs {o.curve_jobs}",
        [Column(f"{k} process{'es' if k > 1 else ''}", f"rate_{k}", show_range=False)
         for k in o.curve_workers],
        series,
        notes=["async_consumer: N `async-consumer run --until-empty` processes on one "
               "stream; Dramatiq: `dramatiq-gevent --processes N`. The machine has "
               f"{_cpus()} cores, shared with nginx and Redis, so more than 2 processes "
               f"only add contention. Medians of {o.workers_repeat} run(s) per point."],
    )


def _label(job: Job) -> str:
    return "async_consumer redis" if job.system == "ac" else "Dramatiq redis"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
