"""The scheduler's own cost: no-op throughput, memory per idle task, and a soak run.

Run ``python -m bench.scheduler`` from the repository root. It prints:

* the no-op rate of ``AsyncConsumer(MemoryProvider(promises), 100, 0.0, logger)`` next
  to the rate of a raw ``gevent.pool.Pool(100)`` spawning no-op functions, measured
  in the same process, interleaved, several rounds, with medians. The ratio is what
  matters: the machine's speed cancels out of it;
* the resident memory each in-flight task costs while it sleeps in ``gevent.sleep``;
* a soak run: resident memory sampled every 100,000 tasks, and how much it grew.

Memory figures come from fresh child processes, so that nothing measured before
(or the benchmark itself) is counted. Every loop here is bounded in count and time.
"""

from __future__ import annotations

if __name__ == "__main__":
    # A worker patches before anything else is imported; so does this program.
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from async_consumer import AsyncConsumer, MemoryProvider, Promise  # noqa: E402
from async_consumer.provider import Provider  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: The soak run samples resident memory after every this many settled tasks.
SOAK_SAMPLE_EVERY = 100_000
#: How long a child process may take beyond its own time bound before it is killed.
CHILD_SPARE_SECONDS = 120.0
#: The longest the memory child waits for all its tasks to be in flight.
FILL_SECONDS = 120.0
#: How long an idle task sleeps: far longer than the measurement, which cancels it.
IDLE_TASK_SECONDS = 3600.0


class NoOp(Promise):
    """A task with no work at all: what is left is the scheduler's cost."""

    def run(self) -> None:
        pass


def quiet_logger() -> logging.Logger:
    """A standard logger at WARNING, as a production worker runs: debug lines are off."""
    log = logging.getLogger("bench.scheduler")
    log.setLevel(logging.WARNING)
    log.propagate = False
    return log


def resident_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm`` (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- throughput --------------------------------------------------------------------------

def noop_rate_raw_pool(n: int, concurrency: int) -> float:
    """Tasks per second of a bare ``gevent.pool.Pool`` spawning ``n`` no-op functions.

    This is the floor any greenlet scheduler is compared with: one greenlet per task
    and nothing else.
    """
    return n / _raw_pool_seconds(n, concurrency)[0]


def noop_rate_consumer(n: int, concurrency: int) -> float:
    """Tasks per second of an ``AsyncConsumer`` running ``n`` no-op promises to the end.

    The promises are made before the clock starts: the figure is the scheduler's, from
    the first fetch to the provider's close.
    """
    return n / _consumer_seconds(n, concurrency)[0]


def _raw_pool_seconds(n: int, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``n`` no-op spawns in a raw pool."""
    def noop() -> None:
        pass

    pool = Pool(concurrency)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        pool.spawn(noop)
    pool.join()
    return time.perf_counter() - wall, time.process_time() - cpu


def _consumer_seconds(n: int, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``n`` no-op promises through a consumer."""
    promises = [NoOp() for _ in range(n)]
    consumer = AsyncConsumer(MemoryProvider(promises), concurrency, 0.0, quiet_logger(),
                             handle_signals=False)

    wall, cpu = time.perf_counter(), time.process_time()
    stats = consumer.consume(until_empty=True)
    elapsed = time.perf_counter() - wall, time.process_time() - cpu

    if stats.finished != n:
        raise RuntimeError(f"the consumer finished {stats.finished} of {n} no-op tasks")
    return elapsed


def compare_rates(n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """Both rates, interleaved in this process, alternating which one goes first.

    Other processes share the machine, so a single pair says little; the medians of
    several interleaved rounds, and the median of the per-round ratios, do.
    """
    runs: list[dict[str, float]] = []
    for round_number in range(rounds):
        figures: dict[str, float] = {}
        order = ("raw", "consumer") if round_number % 2 == 0 else ("consumer", "raw")
        for variant in order:
            gc.collect()
            timer = _raw_pool_seconds if variant == "raw" else _consumer_seconds
            wall, cpu = timer(n, concurrency)
            figures[variant] = n / wall
            figures[f"{variant}_cpu"] = n / cpu if cpu > 0 else float("inf")
        figures["ratio"] = figures["consumer"] / figures["raw"]
        figures["ratio_cpu"] = figures["consumer_cpu"] / figures["raw_cpu"]
        runs.append(figures)

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    return {
        "tasks": n,
        "concurrency": concurrency,
        "rounds": runs,
        "raw_median": median("raw"),
        "consumer_median": median("consumer"),
        "ratio_median": median("ratio"),
        "ratio_cpu_median": median("ratio_cpu"),
    }


# -- memory ------------------------------------------------------------------------------

def memory_per_idle_task(n_in_flight: int = 10000) -> float:
    """Bytes of resident memory per in-flight task blocked in ``gevent.sleep``.

    Measured in a fresh process: the growth from just before the promises are made
    to the moment all ``n_in_flight`` of them sleep inside a consumer of that
    concurrency, divided by their number. Promise objects, greenlets, timers and the
    scheduler's own records are all counted.
    """
    return float(_child("memory", str(n_in_flight),
                        timeout=FILL_SECONDS + CHILD_SPARE_SECONDS)["per_task_bytes"])


def soak(n_tasks: int, max_seconds: float) -> dict[str, Any]:
    """Run up to ``n_tasks`` no-op tasks (stopping after ``max_seconds``) in a fresh process.

    Resident memory is sampled after every 100,000 settled tasks and at the end. The
    first 100,000 tasks are the warm-up; ``growth_bytes`` is the change from the first
    sample after them to the last sample (``None`` with fewer than two samples).
    """
    return _child("soak", str(n_tasks), str(max_seconds),
                  timeout=max_seconds + CHILD_SPARE_SECONDS)


def _child(*args: str, timeout: float) -> dict[str, Any]:
    """Run this module in a child process and read the JSON line it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.scheduler", "--child", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"child {args} failed ({result.returncode}): {result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure_idle_tasks(n_in_flight: int) -> dict[str, Any]:
    """In a fresh process: fill a consumer with sleeping tasks and read the growth."""
    sleeping = {"count": 0}

    class Idle(Promise):
        def run(self) -> None:
            sleeping["count"] += 1
            gevent.sleep(IDLE_TASK_SECONDS)

    log = quiet_logger()
    gevent.get_hub()
    gc.collect()
    before = resident_bytes()

    promises = [Idle() for _ in range(n_in_flight)]
    consumer = AsyncConsumer(MemoryProvider(promises), n_in_flight, 0.0, log,
                             shutdown_timeout=0, handle_signals=False)
    running = gevent.spawn(consumer.consume)

    deadline = time.monotonic() + FILL_SECONDS
    while sleeping["count"] < n_in_flight and time.monotonic() < deadline:
        gevent.sleep(0.05)
    gevent.sleep(0.2)
    gc.collect()
    during = resident_bytes()
    in_flight = consumer.in_flight

    consumer.stop("measured")
    running.join(timeout=FILL_SECONDS)
    return {
        "tasks": n_in_flight,
        "sleeping": sleeping["count"],
        "in_flight": in_flight,
        "rss_before_bytes": before,
        "rss_in_flight_bytes": during,
        "per_task_bytes": (during - before) / n_in_flight,
    }


class _Stream(Provider):
    """Makes no-op promises on demand and samples memory as they settle.

    Settled promises are dropped at once (a ``MemoryProvider`` keeps them all), so
    that any growth is the consumer's.
    """

    def __init__(self, total: int, max_seconds: float) -> None:
        self.total = total
        self.deadline = time.monotonic() + max_seconds
        self.made = 0
        self.settled = 0
        self.samples: list[dict[str, float]] = []

    def get(self) -> Promise | None:
        if self.made >= self.total or time.monotonic() >= self.deadline:
            return None
        self.made += 1
        return NoOp()

    def get_batch(self, max_count: int) -> list[Promise]:
        if time.monotonic() >= self.deadline:
            return []
        count = min(max_count, self.total - self.made)
        self.made += count
        return [NoOp() for _ in range(count)]

    def settle(self, promise: Promise) -> None:
        self.settled += 1
        if self.settled % SOAK_SAMPLE_EVERY == 0:
            self.sample()

    def sample(self) -> None:
        gc.collect()
        self.samples.append({"tasks": self.settled, "rss_bytes": resident_bytes()})


def _soak_here(n_tasks: int, max_seconds: float) -> dict[str, Any]:
    provider = _Stream(n_tasks, max_seconds)
    consumer = AsyncConsumer(provider, 100, 0.0, quiet_logger(), handle_signals=False)

    started = time.monotonic()
    consumer.consume(until_empty=True)
    seconds = time.monotonic() - started
    if not provider.samples or provider.samples[-1]["tasks"] != provider.settled:
        provider.sample()

    samples = provider.samples
    growth = samples[-1]["rss_bytes"] - samples[0]["rss_bytes"] if len(samples) > 1 else None
    return {
        "tasks": provider.settled,
        "seconds": round(seconds, 2),
        "per_second": round(provider.settled / seconds, 1) if seconds > 0 else 0.0,
        "samples": samples,
        "growth_bytes": growth,
    }


# -- the command line --------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="no-op tasks per rate run")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rate rounds")
    parser.add_argument("--idle-tasks", type=int, default=10_000,
                        help="in-flight sleeping tasks for the memory figure")
    parser.add_argument("--soak-tasks", type=int, default=2_000_000)
    parser.add_argument("--soak-seconds", type=float, default=120.0)
    parser.add_argument("--only", choices=("rate", "memory", "soak"), action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    if options.child:
        print(json.dumps(_run_child(options.child)))
        return 0

    parts = options.only or ["rate", "memory", "soak"]
    if "rate" in parts:
        _print_rates(compare_rates(options.tasks, options.concurrency, options.rounds))
    if "memory" in parts:
        per_task = memory_per_idle_task(options.idle_tasks)
        print(f"memory: {per_task / 1024:.2f} KiB resident per idle in-flight task "
              f"({options.idle_tasks} tasks sleeping)")
    if "soak" in parts:
        _print_soak(soak(options.soak_tasks, options.soak_seconds))
    return 0


def _run_child(args: list[str]) -> dict[str, Any]:
    kind = args[0]
    if kind == "memory":
        return _measure_idle_tasks(int(args[1]))
    if kind == "soak":
        return _soak_here(int(args[1]), float(args[2]))
    raise SystemExit(f"unknown child kind {kind!r}")


def _print_rates(result: dict[str, Any]) -> None:
    print(f"no-op rate, {result['tasks']} tasks, concurrency {result['concurrency']} "
          f"(tasks/s; cpu = per CPU second)")
    for number, run in enumerate(result["rounds"], 1):
        print(f"  round {number}: raw pool {run['raw']:9.0f}  consumer {run['consumer']:9.0f}"
              f"  ratio {run['ratio']:.2f}  (cpu ratio {run['ratio_cpu']:.2f})")
    print(f"  median: raw pool {result['raw_median']:.0f}  consumer "
          f"{result['consumer_median']:.0f}  ratio {result['ratio_median']:.2f}  "
          f"(cpu ratio {result['ratio_cpu_median']:.2f})")


def _print_soak(result: dict[str, Any]) -> None:
    print(f"soak: {result['tasks']} tasks in {result['seconds']}s "
          f"({result['per_second']:.0f}/s)")
    for sample in result["samples"]:
        print(f"  after {sample['tasks']:>9} tasks: {sample['rss_bytes'] / 2**20:7.1f} MiB")
    growth = result["growth_bytes"]
    if growth is None:
        print("  growth: not enough samples (run more tasks)")
    else:
        print(f"  growth after warm-up: {growth / 1024:.0f} KiB")


if __name__ == "__main__":
    sys.exit(main())
