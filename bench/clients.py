"""One HTTP client variant, run as a child program: N GETs at concurrency C.

    python -m bench.clients VARIANT --url URL -n N -c C [--slow-url URL --slow-every K]

It prints one JSON line: requests done, failures, wall seconds and the CPU seconds
this process spent (``resource.getrusage``) between the first request and the last
answer, so start-up and imports are not counted.

Only ``sys``, ``json``, ``time``, ``resource`` and ``argparse`` are imported before
the variant is known: the gevent variants monkey-patch first, the asyncio ones never.
"""

import argparse
import json
import resource
import sys
import time
from typing import Any, Callable, Iterable

#: Variants that run on gevent; the process is patched before their imports.
GEVENT_VARIANTS = ("gevent-requests", "requests-pool10", "gevent-urllib3",
                   "geventhttpclient", "seed-model", "async_consumer")
#: grequests patches the process itself when it is imported, as its docs show.
SELF_PATCHING_VARIANTS = ("grequests",)
ASYNCIO_VARIANTS = ("aiohttp", "httpx")
VARIANTS = GEVENT_VARIANTS + SELF_PATCHING_VARIANTS + ASYNCIO_VARIANTS
TIMEOUT_SECONDS = 30.0
#: The seed design sleeps 1 ms (blocking the whole process) before each status check.
SEED_POLL_SECONDS = 0.001


class Tally:
    """Counts answers; the first failure is kept so that a broken run says why."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.first_error = ""

    def success(self, status: int) -> None:
        if status == 200:
            self.ok += 1
        else:
            self.failure(f"HTTP {status}")

    def failure(self, reason: Any) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = repr(reason)[:300]


def url_list(args: argparse.Namespace) -> list[str]:
    """The URLs in order: every ``slow_every``-th one (spread evenly) is the slow URL."""
    if not args.slow_url or not args.slow_every:
        return [args.url] * args.n
    middle = args.slow_every // 2
    return [args.slow_url if index % args.slow_every == middle else args.url
            for index in range(args.n)]


# -- gevent variants -------------------------------------------------------------------


def drive_greenlets(urls: Iterable[str], concurrency: int, call: Callable[[str], int],
                    tally: Tally) -> None:
    """Run ``call(url)`` for every URL in a gevent pool of ``concurrency`` greenlets."""
    from gevent.pool import Pool

    def one(url: str) -> None:
        try:
            tally.success(call(url))
        except Exception as error:
            tally.failure(error)

    pool = Pool(concurrency)
    for url in urls:
        pool.spawn(one, url)
    pool.join()


def gevent_requests(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """requests on one session whose pool holds ``concurrency`` connections."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
    session.mount("http://", adapter)

    def call(url: str) -> int:
        response = session.get(url, timeout=TIMEOUT_SECONDS)
        response.content
        return response.status_code

    drive_greenlets(urls, concurrency, call, tally)
    return {}


class _CountingHandler:
    """A logging handler that counts urllib3's "Connection pool is full" warnings."""

    def __init__(self) -> None:
        import logging

        class Handler(logging.Handler):
            count = 0

            def emit(self, record: logging.LogRecord) -> None:
                if "Connection pool is full" in record.getMessage():
                    Handler.count += 1

        self.handler = Handler(logging.WARNING)
        logger = logging.getLogger("urllib3.connectionpool")
        logger.addHandler(self.handler)
        logger.propagate = False

    @property
    def count(self) -> int:
        return int(type(self.handler).count)


def requests_pool10(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """requests on one session with its default pool (10): extra connections are dropped."""
    import requests

    warnings = _CountingHandler()
    session = requests.Session()

    def call(url: str) -> int:
        response = session.get(url, timeout=TIMEOUT_SECONDS)
        response.content
        return response.status_code

    drive_greenlets(urls, concurrency, call, tally)
    return {"pool_full_warnings": warnings.count}


def grequests_variant(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """grequests as its README shows: a generator of requests, ``grequests.map(size=...)``."""
    import grequests

    def failed(request: Any, error: Exception) -> None:
        tally.failure(error)

    pending = (grequests.get(url, timeout=TIMEOUT_SECONDS) for url in urls)
    for response in grequests.map(pending, size=concurrency, exception_handler=failed):
        if response is not None:
            tally.success(response.status_code)
    return {}


def gevent_urllib3(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """urllib3's PoolManager with ``maxsize`` = concurrency."""
    import urllib3

    manager = urllib3.PoolManager(maxsize=concurrency)

    def call(url: str) -> int:
        response = manager.request("GET", url, timeout=TIMEOUT_SECONDS)
        response.data
        return int(response.status)

    drive_greenlets(urls, concurrency, call, tally)
    return {}


def geventhttpclient_variant(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """geventhttpclient's HTTPClient with a pool of ``concurrency`` connections per host."""
    from geventhttpclient import URL, HTTPClient

    clients: dict[tuple[str, int | None], HTTPClient] = {}
    paths: dict[str, tuple[HTTPClient, str]] = {}
    for url in set(urls):
        parsed = URL(url)
        key = (parsed.host, parsed.port)
        if key not in clients:
            clients[key] = HTTPClient.from_url(
                url, concurrency=concurrency, connection_timeout=TIMEOUT_SECONDS,
                network_timeout=TIMEOUT_SECONDS)
        paths[url] = (clients[key], parsed.request_uri)

    def call(url: str) -> int:
        client, path = paths[url]
        response = client.get(path)
        response.read()
        response.release()
        return int(response.status_code)

    drive_greenlets(urls, concurrency, call, tally)
    for client in clients.values():
        client.close()
    return {}


def seed_model(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """The seed design, re-implemented in Python: batch, then barrier, then poll.

    The original library collects a batch of ``concurrency`` promises, starts them,
    and resumes one Fiber per promise in a loop; each Fiber sleeps 1 ms with
    ``usleep`` (which blocks the whole process) before checking its promise, and the
    loop sleeps 1 ms per pass. The next batch starts only when the slowest request of
    this one is done. Every request uses a client of its own, so a new connection.
    Here a promise is a greenlet doing ``requests.get``; the blocking sleep is the
    unpatched ``time.sleep``; a status check runs the hub once (``gevent.sleep(0)``),
    as a status check of the original drives its transfers once.
    """
    import gevent
    import requests
    from gevent import monkey

    blocking_sleep = monkey.get_original("time", "sleep")

    def fetch(url: str) -> None:
        try:
            response = requests.get(url, timeout=TIMEOUT_SECONDS)
            tally.success(response.status_code)
        except Exception as error:
            tally.failure(error)

    def fiber(task: gevent.Greenlet) -> Any:
        while True:
            yield
            blocking_sleep(SEED_POLL_SECONDS)
            gevent.sleep(0)
            if task.ready():
                return

    passes = 0
    for start in range(0, len(urls), concurrency):
        fibers = []
        for url in urls[start:start + concurrency]:
            routine = fiber(gevent.spawn(fetch, url))
            next(routine)
            fibers.append(routine)

        while fibers:
            blocking_sleep(SEED_POLL_SECONDS)
            passes += 1
            for routine in list(fibers):
                try:
                    next(routine)
                except StopIteration:
                    fibers.remove(routine)
    return {"polling_passes": passes}


def async_consumer_variant(urls: list[str], concurrency: int, tally: Tally,
                           transport: str, mode: str) -> dict:
    """AsyncConsumer + MemoryProvider of RequestsPromise, a no-op handler.

    ``transport`` is passed to RequestsPromise when it accepts the keyword; a build
    without it runs its default transport, and the result says so.
    """
    import inspect
    import logging

    import requests

    from async_consumer import AsyncConsumer, MemoryProvider
    from async_consumer.http import RequestFactory, RequestsPromise, ResponseHandler

    class Factory(RequestFactory):
        def __init__(self, url: str) -> None:
            self.url = url

        def create(self) -> requests.Request:
            return requests.Request("GET", self.url)

    class Handler(ResponseHandler):
        def on_success(self, response: requests.Response) -> None:
            tally.success(response.status_code)

        def on_exception(self, error: Exception) -> None:
            tally.failure(error.__cause__ or error)

    supported = "transport" in inspect.signature(RequestsPromise.__init__).parameters
    options: dict[str, Any] = {"transport": transport} if supported else {}
    factories = {url: Factory(url) for url in set(urls)}
    handler = Handler()

    log = logging.getLogger("bench.async_consumer")
    log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.WARNING)

    provider = MemoryProvider(RequestsPromise(factories[url], handler, **options)
                              for url in urls)
    consumer = AsyncConsumer(provider, concurrency, 0, log, mode=mode,
                             handle_signals=False)
    consumer.consume(until_empty=True)
    return {"transport": transport if supported else "default (no transport keyword)",
            "mode": mode}


# -- asyncio variants ------------------------------------------------------------------


def aiohttp_variant(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """aiohttp: one ClientSession, a semaphore of ``concurrency``."""
    import asyncio

    import aiohttp

    async def main() -> None:
        semaphore = asyncio.Semaphore(concurrency)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def one(url: str) -> None:
                async with semaphore:
                    try:
                        async with session.get(url) as response:
                            await response.read()
                            tally.success(response.status)
                    except Exception as error:
                        tally.failure(error)

            await asyncio.gather(*(one(url) for url in urls))

    asyncio.run(main())
    return {}


def httpx_variant(urls: list[str], concurrency: int, tally: Tally) -> dict:
    """httpx's AsyncClient, its pool and keep-alive limits raised to ``concurrency``."""
    import asyncio

    import httpx

    async def main() -> None:
        semaphore = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency,
                              max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_SECONDS) as client:

            async def one(url: str) -> None:
                async with semaphore:
                    try:
                        response = await client.get(url)
                        tally.success(response.status_code)
                    except Exception as error:
                        tally.failure(error)

            await asyncio.gather(*(one(url) for url in urls))

    asyncio.run(main())
    return {}


RUNNERS: dict[str, Callable[..., dict]] = {
    "gevent-requests": gevent_requests,
    "requests-pool10": requests_pool10,
    "grequests": grequests_variant,
    "gevent-urllib3": gevent_urllib3,
    "geventhttpclient": geventhttpclient_variant,
    "seed-model": seed_model,
    "aiohttp": aiohttp_variant,
    "httpx": httpx_variant,
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--url", required=True)
    parser.add_argument("-n", type=int, required=True)
    parser.add_argument("-c", "--concurrency", type=int, required=True)
    parser.add_argument("--slow-url", default="")
    parser.add_argument("--slow-every", type=int, default=0)
    parser.add_argument("--transport", default="fast", help="async_consumer only")
    parser.add_argument("--mode", default="sliding", help="async_consumer only")
    args = parser.parse_args(argv)

    if args.variant in GEVENT_VARIANTS:
        from gevent import monkey

        monkey.patch_all()

    urls = url_list(args)
    tally = Tally()
    cpu_before, started = cpu_seconds(), time.perf_counter()
    if args.variant == "async_consumer":
        extra = async_consumer_variant(urls, args.concurrency, tally, args.transport,
                                       args.mode)
    else:
        extra = RUNNERS[args.variant](urls, args.concurrency, tally)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before

    print(json.dumps({
        "variant": args.variant, "n": args.n, "concurrency": args.concurrency,
        "ok": tally.ok, "errors": tally.errors, "first_error": tally.first_error,
        "seconds": seconds, "cpu_seconds": cpu,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **extra,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
