"""The scheduler on its own: in-memory providers, gevent-only tasks, no network."""

from __future__ import annotations

import contextvars
import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import gevent
import pytest
from loguru import logger as loguru_logger

from async_consumer import (
    AsyncConsumer,
    FatalTaskError,
    MemoryProvider,
    Promise,
    Provider,
    RetryLater,
    Status,
    TaskTimeout,
    yield_control,
)
from async_consumer.workers import WorkerPool, current_concurrency
from async_consumer.stats import ConsumerStats
from conftest import ListHandler, stop_process, wait_until


class Sleeper(Promise):
    """A blocking-style promise that sleeps and records when it ran."""

    def __init__(self, seconds: float, name: str | None = None) -> None:
        super().__init__(name)
        self.seconds = seconds
        self.began = self.ended = None
        self.timeouts: list[TaskTimeout] = []

    def run(self) -> None:
        self.began = time.monotonic()
        gevent.sleep(self.seconds)
        self.ended = time.monotonic()

    def on_timeout(self, error: TaskTimeout) -> None:
        self.timeouts.append(error)


class Raiser(Promise):
    def run(self) -> None:
        raise ValueError("boom in the task body")


class Fatal(Promise):
    def run(self) -> None:
        raise FatalTaskError("the credentials were revoked")


class Polled(Promise):
    """The original library's polling style: start, then a status that settles later."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def start(self) -> None:
        gevent.spawn_later(0.1, self._finish)

    def _finish(self) -> None:
        self._status = Status.OK

    _status = Status.PENDING

    @property
    def status(self) -> Status:
        self.looks += 1
        return self._status

    @status.setter
    def status(self, value: Status) -> None:
        self._status = value


def run_consumer(promises, concurrency=10, collect=0.0, **options):
    provider = MemoryProvider(promises)
    consumer = AsyncConsumer(provider, concurrency, collect, handle_signals=False, **options)
    started = time.monotonic()
    stats = consumer.consume(until_empty=True)
    return provider, consumer, stats, time.monotonic() - started


# -- scheduling ------------------------------------------------------------------------

def skewed_tasks() -> list[Sleeper]:
    """200 tasks: 98% take 10 ms, one in fifty takes 500 ms, one slow task per 50."""
    return [Sleeper(0.5 if index % 50 == 0 else 0.01) for index in range(200)]


def test_sliding_window_finishes_skewed_latencies_close_to_the_ideal():
    _, _, stats, elapsed = run_consumer(skewed_tasks(), concurrency=20)

    ideal = 0.5  # the slowest task; the total work / 20 slots is only ~0.2 s
    assert stats.count(Status.OK) == 200
    assert elapsed < ideal * 1.5, f"sliding window took {elapsed:.2f}s, ideal {ideal}s"


def test_batch_mode_waits_for_the_slowest_task_of_each_batch_like_the_original():
    tasks = skewed_tasks()
    _, _, stats, elapsed = run_consumer(tasks, concurrency=20, mode="batch")

    assert stats.count(Status.OK) == 200
    assert stats.batches == 10
    # four batches hold a 500 ms task, six only 10 ms tasks
    assert 1.9 < elapsed < 3.0
    for earlier, later in zip(range(0, 180, 20), range(20, 200, 20)):
        last_end = max(task.ended for task in tasks[earlier:earlier + 20])
        first_start = min(task.began for task in tasks[later:later + 20])
        assert first_start >= last_end


def test_sliding_window_never_runs_more_than_concurrency_and_does_reach_it():
    running = {"now": 0, "most": 0}

    class Counted(Promise):
        def run(self):
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
            gevent.sleep(0.02)
            running["now"] -= 1

    run_consumer([Counted() for _ in range(300)], concurrency=25)

    assert running["most"] == 25


class Trickle(Provider):
    """Hands out one promise every ``gap`` seconds."""

    def __init__(self, count: int, gap: float) -> None:
        self.left = count
        self.gap = gap
        self.next_at = time.monotonic()

    def get(self):
        if self.left == 0 or time.monotonic() < self.next_at:
            return None
        self.left -= 1
        self.next_at = time.monotonic() + self.gap
        return Sleeper(0.0)

    def has_pending_work(self) -> bool:
        return self.left > 0


def test_a_batch_is_cut_when_the_collect_time_passes_with_work_waiting():
    consumer = AsyncConsumer(Trickle(12, 0.05), 10, 0.2, mode="batch", handle_signals=False)
    stats = consumer.consume(until_empty=True)

    assert stats.count(Status.OK) == 12
    # promises arrive every 50 ms, a batch closes 200 ms after its first one
    assert 2 <= stats.batches <= 6


def test_a_batch_is_full_at_concurrency_promises_without_waiting_for_the_collect_time():
    started = time.monotonic()
    _, _, stats, _ = run_consumer([Sleeper(0) for _ in range(30)], concurrency=10,
                                  collect=5.0, mode="batch")

    assert stats.batches == 3
    assert time.monotonic() - started < 1.0


def test_polling_style_promises_settle_without_busy_spinning():
    promises = [Polled() for _ in range(50)]
    _, _, stats, elapsed = run_consumer(promises, concurrency=50)

    assert stats.count(Status.OK) == 50
    assert elapsed < 0.5
    # 100 ms of polling with a doubling pause from 1 ms up to 50 ms: about ten looks
    assert max(promise.looks for promise in promises) < 20


def test_an_empty_provider_is_polled_with_backoff_not_in_a_busy_loop():
    class Empty(Provider):
        calls = 0

        def get(self):
            Empty.calls += 1
            return None

    consumer = AsyncConsumer(Empty(), 10, 0.0, idle_poll_max=0.2, handle_signals=False)
    gevent.spawn_later(1.0, consumer.stop)
    consumer.consume()

    assert Empty.calls < 20


# -- failures --------------------------------------------------------------------------

def test_an_exception_in_a_task_fails_that_task_only_and_is_logged_once(capfd):
    records = []
    sink = loguru_logger.add(records.append, level="ERROR")
    try:
        provider, _, stats, _ = run_consumer([Sleeper(0.01), Raiser(), Sleeper(0.01)])
    finally:
        loguru_logger.remove(sink)

    outcomes = sorted(promise.outcome.value for promise in provider.settled)
    assert outcomes == ["error", "ok", "ok"]
    assert len(records) == 1
    assert "ValueError: boom in the task body" in str(records[0])
    assert "Traceback" in str(records[0])
    assert "failed with" not in capfd.readouterr().err


def test_a_handler_asking_for_a_retry_gets_the_retry_outcome_with_its_delay():
    class Busy(Promise):
        def run(self):
            raise RetryLater("server busy", delay_seconds=7)

    provider, _, _, _ = run_consumer([Busy()])

    assert provider.settled[0].outcome is Status.RETRY
    assert provider.settled[0].retry_delay == 7


def test_a_fatal_task_error_stops_the_consumer_cleanly_and_is_raised():
    slow = [Sleeper(0.3) for _ in range(3)]
    provider = MemoryProvider([*slow, Fatal(), *[Sleeper(0.01) for _ in range(50)]])
    consumer = AsyncConsumer(provider, 4, 0.0, handle_signals=False)

    with pytest.raises(FatalTaskError, match="credentials were revoked"):
        consumer.consume()

    assert all(task.outcome is Status.OK for task in slow)
    assert provider.closed
    assert any(p.outcome is Status.FATAL for p in provider.settled)
    assert len(provider) > 40, "the consumer kept taking work after the fatal error"


def test_a_task_that_never_finishes_times_out_and_frees_its_slot():
    hung = Sleeper(3600)
    tasks = [Sleeper(0.05) for _ in range(9)] + [hung]
    provider, consumer, stats, elapsed = run_consumer(tasks, concurrency=10, task_timeout=1)

    assert elapsed < 2.0
    assert stats.count(Status.OK) == 9
    assert hung.outcome is Status.TIMEOUT
    assert len(hung.timeouts) == 1 and isinstance(hung.timeouts[0], TaskTimeout)
    assert consumer.pool.free_count() == 10
    assert all(greenlet.dead for greenlet in consumer.pool.greenlets)


def test_each_task_keeps_its_own_result_whatever_order_tasks_finish_in():
    class Named(Sleeper):
        def run(self):
            super().run()
            self.result = self.id

    tasks = [Named(0.3, "A"), Named(0.2, "B"), Named(0.1, "C")]
    provider, _, _, _ = run_consumer(tasks)

    assert [p.id for p in provider.settled] == ["C", "B", "A"]
    assert all(task.result == task.id for task in tasks)


def test_constructor_rejects_bad_values_with_a_clear_message():
    with pytest.raises(ValueError, match="concurrency must be a whole number of at least 1"):
        AsyncConsumer(MemoryProvider(), 0, 0.1)
    with pytest.raises(ValueError, match="max_batch_collect_time"):
        AsyncConsumer(MemoryProvider(), 5, -1)
    with pytest.raises(ValueError, match="mode must be 'sliding' or 'batch'"):
        AsyncConsumer(MemoryProvider(), 5, 0.1, mode="fast")


def test_a_promise_that_overrides_neither_run_nor_start_is_refused():
    with pytest.raises(TypeError, match="must override run"):
        Promise()


def test_a_standard_library_logger_is_accepted(caplog):
    log = logging.getLogger("embedding-app")
    with caplog.at_level(logging.INFO, logger="embedding-app"):
        provider = MemoryProvider([Sleeper(0)])
        AsyncConsumer(provider, 2, 0.0, log, handle_signals=False).consume(until_empty=True)

    assert any("consumer starting" in message for message in caplog.messages)
    assert any("consumer stopped" in message for message in caplog.messages)


# -- stopping --------------------------------------------------------------------------

class Recorder(MemoryProvider):
    """Records settle and close calls in order."""

    def __init__(self, promises):
        super().__init__(promises)
        self.events: list[str] = []

    def settle(self, promise):
        self.events.append(f"settle:{promise.outcome.value}")
        super().settle(promise)

    def close(self):
        self.events.append("close")
        super().close()


def test_stop_lets_in_flight_tasks_finish_and_settles_them_before_closing():
    provider = Recorder([Sleeper(0.5) for _ in range(10)] + [Sleeper(0.5) for _ in range(5)])
    consumer = AsyncConsumer(provider, 10, 0.0, shutdown_timeout=3, handle_signals=False)
    gevent.spawn_later(0.1, consumer.stop)
    consumer.consume()

    assert provider.events == ["settle:ok"] * 10 + ["close"]
    assert len(provider) == 5


def test_tasks_still_running_at_the_shutdown_timeout_are_cancelled_and_requeued():
    provider = Recorder([Sleeper(30) for _ in range(4)])
    consumer = AsyncConsumer(provider, 4, 0.0, shutdown_timeout=0.3, handle_signals=False)
    gevent.spawn_later(0.1, consumer.stop)
    started = time.monotonic()
    consumer.consume()

    assert time.monotonic() - started < 2
    assert provider.events == ["settle:cancelled"] * 4 + ["close"]
    assert len(provider) == 4


#: A consumer with four hanging tasks in flight that says so, then reports how they ended.
SIGNALLED_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import gevent
from async_consumer import AsyncConsumer, MemoryProvider, Promise

class Hang(Promise):
    def run(self):
        gevent.sleep(60)

provider = MemoryProvider([Hang() for _ in range(6)])
consumer = AsyncConsumer(provider, 4, 0.0, shutdown_timeout=30)

def report_when_full():
    while consumer.in_flight < 4:
        gevent.sleep(0.01)
    print("full", flush=True)

gevent.spawn(report_when_full)
consumer.consume()
print(sorted(p.outcome.value for p in provider.settled), len(provider), flush=True)
"""


def test_a_second_signal_cancels_the_in_flight_tasks_and_they_are_requeued():
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SIGNALLED_SCRIPT)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "full"
        process.send_signal(signal.SIGTERM)
        while "stopping (SIGTERM received)" not in process.stderr.readline():
            pass
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        stop_process(process)

    assert process.returncode == 0, err
    assert out.strip() == "['cancelled', 'cancelled', 'cancelled', 'cancelled'] 6"
    assert "received again: cancelling 4 in-flight task(s)" in err


# -- cooperation -----------------------------------------------------------------------

def test_yield_control_keeps_timers_running_during_cpu_heavy_callbacks():
    ticks = []

    def ticker():
        for _ in range(30):
            ticks.append(time.monotonic())
            gevent.sleep(0.1)

    class Busy(Promise):
        def run(self):
            for _ in range(2000):
                until = time.perf_counter() + 0.0005
                while time.perf_counter() < until:
                    pass
                yield_control()

    ticking = gevent.spawn(ticker)
    run_consumer([Busy()])
    ticking.kill()

    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
    assert len(gaps) >= 5
    assert max(gaps) < 0.3


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class NoOp(Promise):
    def run(self) -> None:
        pass


class Endless(Provider):
    """Makes no-op promises on demand and tracks how many are outstanding."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.made = 0
        self.settled = 0
        self.most_outstanding = 0
        self.checkpoints: dict[int, int] = {}

    def get(self):
        if self.made == self.total:
            return None
        self.made += 1
        self.most_outstanding = max(self.most_outstanding, self.made - self.settled)
        return NoOp()

    def settle(self, promise):
        self.settled += 1
        if self.settled in (5_000, 50_000):
            gc.collect()
            self.checkpoints[self.settled] = resident_bytes()


def test_memory_stays_flat_and_prefetch_never_exceeds_concurrency():
    provider = Endless(50_000)
    AsyncConsumer(provider, 100, 0.0, handle_signals=False).consume(until_empty=True)

    growth = provider.checkpoints[50_000] - provider.checkpoints[5_000]
    assert growth < 10 * 1024 * 1024, f"grew by {growth / 1e6:.1f} MB"
    assert provider.most_outstanding <= 100
    gc.collect()
    live = sum(isinstance(obj, gevent.Greenlet) for obj in gc.get_objects())
    assert live < 100 + 20


def test_tasks_that_never_block_still_let_timers_run_between_them():
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.001)

    class Spin(Promise):
        def run(self):
            until = time.perf_counter() + 0.002
            while time.perf_counter() < until:
                pass

    ticking = gevent.spawn(ticker)
    gevent.sleep(0.01)
    before = len(ticks)
    run_consumer([Spin() for _ in range(300)], concurrency=300)
    ticking.kill()

    # 0.6 s of tasks that never yield: a worker still lets the hub in every few ms,
    # where a worker that ran its whole queue in one go would let it in once
    assert len(ticks) - before >= 20


# -- workers ---------------------------------------------------------------------------

def test_one_worker_runs_its_tasks_in_turn_and_a_timeout_only_hits_its_own_task():
    seen = []

    class Where(Sleeper):
        def run(self):
            seen.append((gevent.getcurrent(), current_concurrency()))
            super().run()

    class Swallower(Promise):
        def run(self):
            seen.append((gevent.getcurrent(), current_concurrency()))
            try:
                gevent.sleep(3600)
            except gevent.Timeout:
                pass  # it ends normally, and the timer it swallowed must not come back

    # "after" needs more than what "most" leaves of the timeout: each task gets it whole
    tasks = [Where(3600, "hung-1"), Where(0.05, "quick-1"), Swallower("swallower"),
             Where(0.05, "quick-2"), Where(0.3, "most"), Where(0.25, "after"),
             Where(3600, "hung-2")]
    run_consumer(tasks, concurrency=1, task_timeout=0.4)

    assert [task.outcome for task in tasks] == [Status.TIMEOUT] + [Status.OK] * 5 + [
        Status.TIMEOUT,
    ]
    assert len({worker for worker, _ in seen}) == 1, "each task got a greenlet of its own"
    assert {size for _, size in seen} == {1}
    assert all(len(task.timeouts) == 1 for task in (tasks[0], tasks[-1]))


def test_a_task_reads_the_consumer_s_concurrency_on_every_worker():
    sizes = []

    class Reads(Sleeper):
        def run(self):
            sizes.append(current_concurrency())
            super().run()

    run_consumer([Reads(0.01) for _ in range(40)], concurrency=7)

    assert sizes == [7] * 40


def test_every_task_starts_with_an_empty_context_even_on_a_reused_worker():
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen = []

    class Marks(Promise):
        def run(self):
            seen.append(marker.get())
            marker.set(self.id)

    run_consumer([Marks() for _ in range(5)], concurrency=1)

    assert seen == ["unset"] * 5


def test_idle_workers_end_after_their_idle_time_and_new_work_starts_new_ones():
    ran = []

    def run_task(promise, deadline):
        gevent.sleep(0.01)
        ran.append(promise)

    pool = WorkerPool(3, run_task, ran.append, task_timeout=None, idle_seconds=1.0)
    pool.submit([Sleeper(0) for _ in range(3)])
    assert pool.join(timeout=10)
    assert len(pool.greenlets) == 3, "blocking tasks did not fan out to three workers"

    wait_until(lambda: not pool.greenlets, "idle workers to end")
    pool.submit([Sleeper(0)])
    assert pool.join(timeout=10)
    assert len(ran) == 4

    pool.close(timeout=5)
    assert not pool.greenlets


def test_killing_the_pool_cancels_running_tasks_and_settles_queued_ones_unstarted():
    started, interrupted, cancelled = [], [], []

    def run_task(promise, deadline):
        started.append(promise)
        try:
            gevent.sleep(3600)
        except gevent.GreenletExit:
            interrupted.append(promise)
            raise

    pool = WorkerPool(2, run_task, cancelled.append, task_timeout=None)
    promises = [Sleeper(0) for _ in range(5)]
    pool.submit(promises)
    wait_until(lambda: len(started) == 2, "two tasks running")
    pool.kill(timeout=5)

    assert started == promises[:2]
    assert {task.id for task in interrupted} == {task.id for task in started}
    assert cancelled == promises[2:]
    assert len(pool) == 0

    late = Sleeper(0)
    pool.submit([late])
    assert cancelled[-1] is late and len(pool) == 0
    pool.close(timeout=5)
    assert not pool.greenlets


def test_a_standard_logger_at_debug_gets_a_line_per_task():
    log = logging.getLogger("per-task-lines")
    handler = ListHandler()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        run_consumer([Sleeper(0) for _ in range(3)], logger=log)
    finally:
        log.removeHandler(handler)

    assert sum(" ok in " in line for line in handler.at(logging.DEBUG)) == 3


def test_a_loguru_sink_at_debug_gets_a_line_per_task():
    records = []
    sink = loguru_logger.add(records.append, level="DEBUG")
    try:
        run_consumer([Sleeper(0) for _ in range(3)])
    finally:
        loguru_logger.remove(sink)

    assert sum(" ok in " in str(record) for record in records) == 3


# -- figures ---------------------------------------------------------------------------

def test_latency_percentiles_come_within_about_two_percent_from_a_fixed_histogram():
    stats = ConsumerStats()
    for milliseconds in range(1, 1001):
        stats.record(Status.OK, milliseconds / 1000)
    stats.record(Status.CANCELLED, 99.0)  # a cancelled task's time is no latency

    # nearest rank: the 501st and the 951st of the thousand; buckets are 4.4% wide
    summary = stats.summary()
    assert summary["p50_ms"] == pytest.approx(501, rel=0.023)
    assert summary["p95_ms"] == pytest.approx(951, rel=0.023)
    assert summary["finished"] == 1000 and summary["cancelled"] == 1

    size = len(stats.latencies.counts)
    for _ in range(10_000):
        stats.record(Status.OK, 3600.0 * 24 * 365)
    assert len(stats.latencies.counts) == size


def test_tasks_that_all_take_the_same_time_report_exactly_that_time():
    same, instant = ConsumerStats(), ConsumerStats()
    for _ in range(100):
        same.record(Status.OK, 0.0123)
        instant.record(Status.OK, 0.0)

    assert same.summary()["p50_ms"] == same.summary()["p95_ms"] == 12.3
    assert instant.summary()["p95_ms"] == 0.0
    assert ConsumerStats().summary()["p50_ms"] is None


def test_status_flags_and_status_keys():
    assert {status for status in Status if status.wants_retry} == {
        Status.RETRY, Status.ERROR, Status.TIMEOUT,
    }
    assert {status for status in Status if status.wants_requeue} == {
        Status.CANCELLED, Status.FATAL,
    }
    assert [status for status in Status if not status.is_final] == [Status.PENDING]
    assert {Status("ok"): "acknowledge"}[pickle.loads(pickle.dumps(Status.OK))] == "acknowledge"


def test_a_memory_provider_hands_out_batches_in_order_and_requeues_cancelled_first():
    promises = [Sleeper(0, str(number)) for number in range(5)]
    provider = MemoryProvider(promises)

    assert provider.get_batch(2) == promises[:2]
    assert provider.get_batch(10) == promises[2:]
    assert provider.get_batch(3) == []

    promises[0].outcome, promises[1].outcome = Status.CANCELLED, Status.OK
    provider.settle(promises[0])
    provider.settle(promises[1])
    assert provider.get_batch(5) == [promises[0]]


# -- patching --------------------------------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_the_patching_self_check_passes_after_patch_all_and_names_a_leftover_epoll():
    result = run_python("""
        from gevent import monkey; monkey.patch_all()
        import select
        from async_consumer.patching import find_patching_problems
        assert find_patching_problems() == [], find_patching_problems()
        select.epoll = object
        print(find_patching_problems())
    """)

    assert result.returncode == 0, result.stderr
    assert "select.epoll survived monkey-patching" in result.stdout


#: Runs ``count`` GETs of ``url`` through a consumer and prints a PatchError if raised.
HTTP_BATCH_SCRIPT = """
import time
import requests
from async_consumer import AsyncConsumer, MemoryProvider, PatchError
from async_consumer.http import RequestsPromise, RequestFactory, ResponseHandler

class Factory(RequestFactory):
    def create(self):
        return requests.Request("GET", {url!r})

class Handler(ResponseHandler):
    def on_success(self, response): pass
    def on_exception(self, error): pass

tasks = [RequestsPromise(Factory(), Handler()) for _ in range({count})]
started = time.monotonic()
try:
    AsyncConsumer(MemoryProvider(tasks), {count}, 0.0).consume(until_empty=True)
except PatchError as error:
    print("refused after", round(time.monotonic() - started, 1), "s:", error)
"""


def test_http_tasks_in_an_unpatched_process_are_refused_not_run_one_by_one(target):
    result = run_python(HTTP_BATCH_SCRIPT.format(url=f"{target.url}/delay/1000", count=10))

    # Refused before the first 1 s request could have ended: nothing ran one by one.
    seconds = float(result.stdout.split("refused after", 1)[1].split("s:", 1)[0])
    assert seconds < 0.5, result.stdout + result.stderr
    assert "not monkey-patched socket" in result.stdout


def test_patching_after_requests_was_imported_is_diagnosed_naming_urllib3(target):
    late_patch = "import async_consumer.http\nimport ssl\n" \
        "from gevent import monkey; monkey.patch_all()\n"
    result = run_python(late_patch + HTTP_BATCH_SCRIPT.format(url=f"{target.url}/ok", count=1))

    assert "gevent patched ssl too late" in result.stdout, result.stderr
    assert "urllib3" in result.stdout
    assert "maximum recursion depth" not in result.stderr
