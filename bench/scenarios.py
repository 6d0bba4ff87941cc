"""The in-process scenarios: HTTP clients, skewed latencies, scheduler and memory.

Each variant runs as a child program (``bench.clients`` or ``bench.overhead``) and
reports one sample; this module turns samples into tables.
"""

from __future__ import annotations

import heapq
from typing import Any

from bench.core import Column, Context, Series, Table, Variant, interleave
from bench.infra import BenchError, run_child

#: How much longer than its expected duration a child may run before it is stopped.
CHILD_TIMEOUT_SECONDS = 900.0
#: The slowest variants run 1/share of the requests, so that each takes seconds, not
#: minutes: a rate over a few thousand requests is as good as one over 20,000, and the
#: whole suite stays within its time. The table shows every variant's count.
SHARES = {"gevent-urllib3": 2, "ac-requests": 8, "gevent-requests": 8, "requests-pool10": 8,
          "grequests": 8, "httpx": 20, "seed-model": 40}


def http_sample(result: dict[str, Any], expected: int) -> dict[str, Any]:
    """Req/s and CPU µs per request from a client child's report; failures raise."""
    if result["errors"] or result["ok"] != expected:
        raise BenchError(f"{result['ok']}/{expected} answered, {result['errors']} failed, "
                         f"first: {result['first_error']}")

    sample = dict(result)
    sample["rate"] = result["ok"] / result["seconds"]
    sample["cpu_us"] = result["cpu_seconds"] / result["ok"] * 1e6
    sample["summary"] = (f"{sample['rate']:,.0f} req/s, {sample['cpu_us']:,.0f} µs CPU/req"
                         + (f", {result['pool_full_warnings']} pool-full warnings"
                            if "pool_full_warnings" in result else ""))
    return sample


def client_variant(ctx: Context, key: str, label: str, client: str, url: str, n: int,
                   concurrency: int, *extra: Any) -> Variant:
    """A variant that runs ``bench.clients client`` and reads its report."""

    def run(rep: int) -> dict[str, Any]:
        result = run_child("bench.clients", [client, "--url", url, "-n", n,
                                             "-c", concurrency, *extra],
                           ctx.tmp, CHILD_TIMEOUT_SECONDS)
        return http_sample(result, n)

    return Variant(key, label, run)


def http_variants(ctx: Context, url: str, n: int, concurrency: int,
                  equal_sizes: bool = False) -> list[Variant]:
    """Scenario 1's contestants, async_consumer first."""
    c = concurrency

    def size(key: str) -> int:
        share = 1 if equal_sizes else SHARES.get(key, 1)
        return min(n, max(2 * c, n // share))

    def variant(key: str, label: str, client: str, *extra: Any) -> Variant:
        return client_variant(ctx, key, label, client, url, size(key), c, *extra)

    return [
        variant("ac-fast", "async_consumer, transport=fast", "async_consumer",
                "--transport", "fast"),
        variant("ac-requests", "async_consumer, transport=requests", "async_consumer",
                "--transport", "requests"),
        variant("aiohttp", f"aiohttp (one session, semaphore {c})", "aiohttp"),
        variant("httpx", f"httpx AsyncClient (pool {c}, semaphore {c})", "httpx"),
        variant("geventhttpclient", f"gevent + geventhttpclient (pool {c})",
                "geventhttpclient"),
        variant("gevent-urllib3", f"gevent + urllib3 PoolManager(maxsize={c})",
                "gevent-urllib3"),
        variant("gevent-requests", f"gevent + requests (session pool {c})", "gevent-requests"),
        variant("requests-pool10", "gevent + requests (default pool 10)", "requests-pool10"),
        variant("grequests", f"grequests.map(size={c}), as documented", "grequests"),
        variant("seed-model", "seed design, re-implemented in Python", "seed-model"),
    ]


def run_http(ctx: Context) -> Table:
    o = ctx.options
    series = interleave(http_variants(ctx, ctx.nginx_url, o.requests, o.concurrency,
                                      o.equal_sizes), o.repeat, "http")
    table = Table(
        "http", f"1. {o.requests:,} GETs at concurrency {o.concurrency}, keep-alive, "
        "nginx answering 100 bytes",
        f"python -m bench --only http --repeat {o.repeat} --requests {o.requests} "
        f"--concurrency {o.concurrency}",
        [Column("req/s", "rate"), Column("client CPU µs/req", "cpu_us"),
         Column("ac fast ÷ this (req/s)", "vs_fast", 2, show_range=False)],
        series,
        extra_columns=[("requests", "n"), ("pool-full warnings", "pool_full_warnings")],
        notes=["The slowest variants run a share of the requests (the `requests` column; "
               "`--equal-sizes` gives every variant the full count): their rate is what is "
               "compared. The seed design's row is a model of the original library's "
               "scheduling, re-implemented in Python with gevent, not the PHP code."],
    )
    add_ratio_to(table, "ac-fast", "rate", "vs_fast")
    return table


def add_ratio_to(table: Table, reference: str, metric: str, name: str) -> None:
    """Give every row the ratio of the reference's median ``metric`` to its own."""
    base = table.find(reference)
    top = base.median(metric) if base else None
    for series in table.series:
        own = series.median(metric)
        if top and own and series.samples:
            series.samples[0][name] = top / own


# -- 2. skewed latencies ---------------------------------------------------------------


def skew_latencies(n: int, fast_ms: int, slow_ms: int, slow_every: int) -> list[float]:
    """The request durations in order; the slow ones spread evenly, as the client does."""
    middle = slow_every // 2
    return [(slow_ms if i % slow_every == middle else fast_ms) / 1000 for i in range(n)]


def ideal_seconds(latencies: list[float], concurrency: int) -> float:
    """The lower bound: total work over the lanes, but never less than the longest one."""
    return max(sum(latencies) / concurrency, max(latencies))


def sliding_window_seconds(latencies: list[float], concurrency: int) -> float:
    """A zero-overhead sliding window started in order: the best an in-order consumer does."""
    lanes = [0.0] * concurrency
    finish = 0.0
    for latency in latencies:
        start = heapq.heappop(lanes)
        heapq.heappush(lanes, start + latency)
        finish = max(finish, start + latency)
    return finish


def run_skew(ctx: Context) -> Table:
    o = ctx.options
    n, c, every = o.skew_requests, o.skew_concurrency, 50
    fast, slow = f"{ctx.delay_url}/delay/10", f"{ctx.delay_url}/delay/500"

    def variant(key: str, label: str, mode: str) -> Variant:
        def run(rep: int) -> dict[str, Any]:
            result = run_child("bench.clients", [
                "async_consumer", "--url", fast, "--slow-url", slow, "--slow-every", every,
                "-n", n, "-c", c, "--transport", "fast", "--mode", mode,
            ], ctx.tmp, CHILD_TIMEOUT_SECONDS)
            sample = http_sample(result, n)
            sample["wall"] = result["seconds"]
            sample["cpu"] = result["cpu_seconds"]
            sample["summary"] = f"{result['seconds']:.3f} s"
            return sample

        return Variant(key, label, run)

    series = interleave([variant("sliding", "async_consumer sliding (transport=fast)",
                                 "sliding"),
                         variant("batch", 'async_consumer mode="batch" (transport=fast)',
                                 "batch")], o.repeat, "skew")
    latencies = skew_latencies(n, 10, 500, every)
    ideal = ideal_seconds(latencies, c)
    window = sliding_window_seconds(latencies, c)
    series.append(Series("window", "sliding window, zero overhead (computed)",
                         [{"wall": window}]))
    series.append(Series("ideal", "ideal lower bound (computed)", [{"wall": ideal}]))
    for s in series:
        for sample in s.samples:
            sample["vs_ideal"] = sample["wall"] / ideal

    return Table(
        "skew", f"2. Skewed latencies: {n:,} requests at concurrency {c}, 98% /delay/10, "
        "2% /delay/500",
        f"python -m bench --only skew --repeat {o.repeat} --skew-requests {n} "
        f"--skew-concurrency {c}",
        [Column("seconds", "wall", 3), Column("÷ ideal", "vs_ideal", 2),
         Column("client CPU seconds", "cpu", 2)],
        series,
        notes=[f"Every {every}th request (from the {every // 2}th on) is the slow one. "
               "Ideal = max(total work / concurrency, longest request). The zero-overhead "
               "window starts requests in order and refills a lane the moment it frees: "
               "what no in-order consumer can beat. Both computed rows assume no CPU cost; "
               "the client's CPU seconds (and the delay server's, on the same cores) come "
               "on top."],
    )


# -- 3 and 4. scheduler overhead and memory --------------------------------------------


def overhead_child(ctx: Context, function: str, *args: Any) -> dict[str, Any]:
    result = run_child("bench.overhead", [function, *args], ctx.tmp, CHILD_TIMEOUT_SECONDS)
    return result


def numeric(value: Any) -> float:
    """The figure of a scheduler function's answer: a number, or the first one in a dict."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                return float(item)
    raise BenchError(f"bench.scheduler returned no number: {value!r}")


def run_scheduler(ctx: Context) -> Table:
    o = ctx.options
    n, c = o.sched_tasks, o.sched_concurrency

    def variant(key: str, label: str, function: str) -> Variant:
        def run(rep: int) -> dict[str, Any]:
            result = overhead_child(ctx, function, n, c)
            rate = numeric(result["value"])
            return {"rate": rate, "raw": result["value"], "summary": f"{rate:,.0f} tasks/s"}

        return Variant(key, label, run)

    series = interleave([variant("raw", f"raw gevent Pool({c})", "noop_rate_raw_pool"),
                         variant("consumer", f"AsyncConsumer, concurrency {c}",
                                 "noop_rate_consumer")], o.repeat, "scheduler")
    table = Table("scheduler", f"3. Scheduler overhead: {n:,} no-op tasks at concurrency {c}",
                  f"python -m bench --only scheduler --repeat {o.repeat} --sched-tasks {n}",
                  [Column("tasks/s", "rate"),
                   Column("÷ raw Pool", "vs_raw", 2, show_range=False)], series)
    raw = table.find("raw")
    base = raw.median("rate") if raw else None
    for s in series:
        if base and s.samples:
            s.samples[0]["vs_raw"] = (s.median("rate") or 0) / base
    return table


def run_memory(ctx: Context) -> Table:
    o = ctx.options

    def idle(rep: int) -> dict[str, Any]:
        result = overhead_child(ctx, "memory_per_idle_task", o.idle_tasks)
        value = numeric(result["value"])
        return {"bytes": value, "kib": value / 1024, "raw": result["value"],
                "summary": f"{value:,.0f} bytes per idle task"}

    series = interleave([Variant("idle", f"{o.idle_tasks:,} idle tasks in flight", idle)],
                        o.repeat, "memory")
    return Table("memory", f"4a. Memory per idle in-flight task ({o.idle_tasks:,} in flight)",
                 f"python -m bench --only memory --repeat {o.repeat} "
                 f"--idle-tasks {o.idle_tasks}",
                 [Column("bytes per task", "bytes"), Column("KiB per task", "kib", 2)],
                 series)


def run_soak(ctx: Context) -> Table:
    """The soak runs once whatever the repetitions: its figure is growth over time."""
    o = ctx.options

    def soak(rep: int) -> dict[str, Any]:
        result = overhead_child(ctx, "soak", o.soak_tasks, o.soak_seconds)
        value = result["value"]
        if not isinstance(value, dict):
            raise BenchError(f"soak() returned {value!r}, not a dict")
        sample: dict[str, Any] = {k: v for k, v in value.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rss = [point["rss_bytes"] for point in value.get("samples") or []
               if isinstance(point, dict) and "rss_bytes" in point]
        if rss:
            sample["rss_first_mib"] = rss[0] / 2**20
            sample["rss_last_mib"] = rss[-1] / 2**20
        if isinstance(sample.get("growth_bytes"), (int, float)):
            sample["growth_mib"] = sample["growth_bytes"] / 2**20
        sample["summary"] = ", ".join(f"{k}={v:,.6g}" for k, v in sample.items())
        sample["raw"] = value
        return sample

    series = interleave([Variant("soak", f"{o.soak_tasks:,} no-op tasks, at most "
                                 f"{o.soak_seconds:.0f} s", soak)], 1, "soak")
    metrics = [k for k in (series[0].samples[0] if series[0].samples else {})
               if k not in ("summary", "raw")]
    return Table("soak", "4b. Soak: RSS over a long run of no-op tasks",
                 f"python -m bench --only soak --soak-tasks {o.soak_tasks} "
                 f"--soak-seconds {o.soak_seconds:.0f}",
                 [Column(m, m, 2 if ("mib" in m or "seconds" in m) else 0, show_range=False)
                  for m in metrics], series)
