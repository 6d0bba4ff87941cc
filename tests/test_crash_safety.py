"""What survives a worker dying or being stopped: real worker processes, real signals,
the real queue file and a real HTTP target of the test's own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from async_consumer.sqlite_queue import SQLiteQueue
from conftest import Target, cli, read_results, stop_process, wait_until, write_ini

QUEUE_NAME = "queue.sqlite3"
RESULTS_NAME = "results.jsonl"
#: Longest any wait-for-something loop in this module may poll.
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.05

PROVIDER_MODULE = "acrash_fatal_provider"
PROVIDER_SOURCE = '''\
"""A provider whose every task raises FatalTaskError; it reports what it saw on close."""

import json

from async_consumer import FatalTaskError, Promise, Provider


class FatalPromise(Promise):
    def run(self):
        raise FatalTaskError("the ledger went read-only")


class FatalProvider(Provider):
    def __init__(self, jobs="50", report="provider-report.json"):
        self.left = int(jobs)
        self.report = report
        self.handed_out = 0
        self.outcomes = []

    def get(self):
        if self.left <= 0:
            return None
        self.left -= 1
        self.handed_out += 1
        return FatalPromise()

    def settle(self, promise):
        self.outcomes.append(promise.outcome.value)

    def has_pending_work(self):
        return self.left > 0

    def close(self):
        with open(self.report, "w") as handle:
            json.dump({"handed_out": self.handed_out, "outcomes": self.outcomes}, handle)
'''


def worker_ini(directory: Path, *, concurrency: int, name: str = "worker.ini",
               results: str = RESULTS_NAME, consumer: str = "", retry: str = "",
               idle_poll_max: float = 0.2) -> Path:
    return write_ini(directory, (
        "[consumer]\n"
        f"concurrency = {concurrency}\n"
        f"idle_poll_max = {idle_poll_max}\n"
        f"{consumer}"
        "[provider]\n"
        f"path = {QUEUE_NAME}\n"
        "[retry]\n"
        "backoff_base = 0.05\n"
        "backoff_max = 0.2\n"
        f"{retry}"
        "[results]\n"
        f"path = {results}\n"
    ), name)


def enqueue(directory: Path, jobs: list[dict], ini: str = "worker.ini") -> None:
    lines = "".join(json.dumps(job) + "\n" for job in jobs)
    done = cli("enqueue", "-c", ini, "-", cwd=directory, stdin=lines)
    assert done.returncode == 0, done.stderr
    assert f"accepted {len(jobs)}" in done.stdout


def line_count(path: Path) -> int:
    """Complete lines so far; safe while a worker is still appending."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def live_jobs(queue_path: Path) -> dict[str, int]:
    """Each job still in the queue file, by key, with its attempt counter."""
    with contextlib.closing(sqlite3.connect(queue_path)) as connection:
        return dict(connection.execute("SELECT key, attempt FROM jobs"))


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``async-consumer run`` processes; any still alive at the end are stopped."""
    started: list[subprocess.Popen] = []

    def start(*args: str, ini: str = "worker.ini", label: str = "worker",
              env: dict | None = None) -> subprocess.Popen:
        with open(tmp_path / f"{label}.out", "w") as out, \
                open(tmp_path / f"{label}.err", "w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "async_consumer", "run", "-c", ini, *args],
                cwd=tmp_path, stdout=out, stderr=err, env=env,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process, signal.SIGKILL)


def finish(process: subprocess.Popen, seconds: float = WAIT_SECONDS) -> int:
    return process.wait(timeout=seconds)


# -- SIGKILL -----------------------------------------------------------------------------

KILL_JOBS = 500
KILL_CONCURRENCY = 20
KILL_AFTER_LINES = 60
#: Two kills: each lands at a random point of the flush cycle, two rarely both miss.
KILLS = 2
#: Results are written, then their jobs deleted, once per flush; a kill between the two
#: repeats at most what one flush held: at ~100 ms a job, about one round of slots.
FLUSH_MARGIN = 20


def test_a_worker_killed_mid_run_loses_no_job_and_repeats_only_in_flight_ones(
    tmp_path: Path, fresh_target: Target, start_worker: Callable[..., subprocess.Popen]
) -> None:
    worker_ini(tmp_path, concurrency=KILL_CONCURRENCY)
    ids = [f"job-{number:03d}" for number in range(KILL_JOBS)]
    # 100 ms on average, but spread from 50 to 150 ms: with equal delays the jobs end in
    # waves, and a kill that follows the first lines would always land just after a
    # flush, when no finished job is waiting to be recorded.
    enqueue(tmp_path, [{"id": job_id, "url": f"{fresh_target.url}/delay/{50 + n * 37 % 101}"}
                       for n, job_id in enumerate(ids)])
    results = tmp_path / RESULTS_NAME

    killed_at = []
    for kill in range(1, KILLS + 1):
        worker = start_worker("--until-empty", label=f"killed-{kill}")
        wanted = KILL_AFTER_LINES * kill
        wait_until(lambda: line_count(results) >= wanted or worker.poll() is not None,
                   f"{wanted} result lines")
        # Lines appear right after a flush; wait into the next interval, so that
        # finished jobs are waiting in the buffer when the worker dies.
        time.sleep(0.03)
        assert worker.poll() is None, "the worker finished before it could be killed"
        worker.send_signal(signal.SIGKILL)
        assert finish(worker) == -signal.SIGKILL
        killed_at.append(len(read_results(results)))
    assert killed_at[-1] < KILL_JOBS

    rerun = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=60)

    assert rerun.returncode == 0, rerun.stderr
    records = read_results(results)
    seen = Counter(record["id"] for record in records)
    assert set(ids) - set(seen) == set()
    assert set(seen) - set(ids) == set()
    assert {record["status"] for record in records} == {"ok"}
    duplicates = sum(count - 1 for count in seen.values())
    repeated_requests = fresh_target.stats()["total"] - KILL_JOBS
    print(f"\nSIGKILL after {killed_at} result lines: {duplicates} duplicate result "
          f"line(s), {repeated_requests} repeated request(s)")
    assert duplicates <= KILLS * (KILL_CONCURRENCY + FLUSH_MARGIN)
    assert 0 <= repeated_requests <= KILLS * (KILL_CONCURRENCY + FLUSH_MARGIN)
    assert live_jobs(tmp_path / QUEUE_NAME) == {}


# -- two workers -------------------------------------------------------------------------


def test_two_workers_on_one_queue_file_share_the_work_and_finish_every_job_once(
    tmp_path: Path, fresh_target: Target, start_worker: Callable[..., subprocess.Popen]
) -> None:
    worker_ini(tmp_path, concurrency=10, name="a.ini", results="results-a.jsonl")
    worker_ini(tmp_path, concurrency=10, name="b.ini", results="results-b.jsonl")
    ids = {f"shared-{number:03d}" for number in range(400)}
    enqueue(tmp_path, [{"id": job_id, "url": f"{fresh_target.url}/delay/50"}
                       for job_id in sorted(ids)], ini="a.ini")

    first = start_worker("--until-empty", ini="a.ini", label="a")
    second = start_worker("--until-empty", ini="b.ini", label="b")

    assert finish(first, 60) == 0, (tmp_path / "a.err").read_text()
    assert finish(second, 60) == 0, (tmp_path / "b.err").read_text()
    by_a = [record["id"] for record in read_results(tmp_path / "results-a.jsonl")]
    by_b = [record["id"] for record in read_results(tmp_path / "results-b.jsonl")]
    assert set(by_a) | set(by_b) == ids
    assert len(by_a) + len(by_b) == len(ids), "some job was run by both workers"
    assert min(len(by_a), len(by_b)) >= 40, (len(by_a), len(by_b))
    stats = fresh_target.stats()
    assert stats["total"] == len(ids)
    assert stats["max_in_flight"] > 10, "the two workers never ran at the same time"


# -- graceful stop -----------------------------------------------------------------------


def test_sigterm_lets_in_flight_jobs_finish_and_record_while_the_rest_stay_queued(
    tmp_path: Path, fresh_target: Target, start_worker: Callable[..., subprocess.Popen]
) -> None:
    worker_ini(tmp_path, concurrency=5, consumer="shutdown_timeout = 10\n")
    ids = [f"slow-{number:02d}" for number in range(12)]
    enqueue(tmp_path, [{"id": job_id, "url": f"{fresh_target.url}/delay/1500"}
                       for job_id in ids])

    worker = start_worker("--until-empty")
    wait_until(lambda: fresh_target.stats()["in_flight"] == 5, "five requests in flight")
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    returncode = finish(worker)
    stopped_after = time.monotonic() - signalled

    assert returncode == 0, (tmp_path / "worker.err").read_text()
    assert stopped_after < 3.0
    finished = read_results(tmp_path / RESULTS_NAME)
    assert len(finished) == 5
    assert {record["status"] for record in finished} == {"ok"}
    assert min(record["elapsed_ms"] for record in finished) >= 1400, finished
    finished_ids = {record["id"] for record in finished}
    # Acknowledged before the queue was closed: only the untouched jobs are left,
    # never delivered.
    left = live_jobs(tmp_path / QUEUE_NAME)
    assert left == {job_id: 0 for job_id in set(ids) - finished_ids}

    worker_ini(tmp_path, concurrency=20, name="wide.ini")
    rerun = cli("run", "-c", "wide.ini", "--until-empty", cwd=tmp_path, timeout=60)

    assert rerun.returncode == 0, rerun.stderr
    seen = Counter(record["id"] for record in read_results(tmp_path / RESULTS_NAME))
    assert set(seen) == set(ids)
    assert [job_id for job_id, count in seen.items() if count > 1] == []
    assert fresh_target.stats()["total"] == len(ids)


def test_jobs_cancelled_when_the_shutdown_timeout_expires_keep_their_attempt(
    tmp_path: Path, fresh_target: Target, start_worker: Callable[..., subprocess.Popen]
) -> None:
    worker_ini(tmp_path, concurrency=5,
               consumer="task_timeout = 30\nshutdown_timeout = 1\n",
               retry="max_attempts = 1\n")
    # With max_attempts 1, a cancelled job that had spent its attempt would be buried
    # unrun on its next delivery; attempt must come back as exactly 1.
    ids = [f"hung-{number}" for number in range(8)]
    enqueue(tmp_path, [{"id": job_id, "url": f"{fresh_target.url}/hang"} for job_id in ids])

    worker = start_worker("--until-empty")
    wait_until(lambda: fresh_target.stats()["in_flight"] == 5, "five hanging requests")
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    returncode = finish(worker)
    stopped_after = time.monotonic() - signalled

    stderr = (tmp_path / "worker.err").read_text()
    assert returncode == 0, stderr
    assert stopped_after < 4.0
    assert "cancelling 5 task(s)" in stderr
    assert read_results(tmp_path / RESULTS_NAME) == []

    queue = SQLiteQueue(tmp_path / QUEUE_NAME)
    try:
        assert queue.counts() == {"ready": 8, "delayed": 0, "leased": 0, "dead": 0}
        claimed = queue.claim(100)
    finally:
        queue.close()
    assert sorted(job.key for job in claimed) == sorted(ids)
    assert {job.key: job.attempt for job in claimed} == {job_id: 1 for job_id in ids}


# -- idle daemon -------------------------------------------------------------------------


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_an_idle_daemon_stops_cleanly_on_a_signal(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen], signal_number: int
) -> None:
    worker_ini(tmp_path, concurrency=5, idle_poll_max=1.0)
    err = tmp_path / "worker.err"

    worker = start_worker()
    wait_until(lambda: "consumer starting" in err.read_text() or worker.poll() is not None,
               "the consumer to start")
    time.sleep(3.0)
    assert worker.poll() is None, err.read_text()
    worker.send_signal(signal_number)
    signalled = time.monotonic()
    returncode = finish(worker, 10)

    stderr = err.read_text()
    assert returncode == 0, stderr
    assert time.monotonic() - signalled < 5.0
    assert "LoopExit" not in stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert f"{signal.Signals(signal_number).name} received" in stderr
    assert "consumer stopped" in stderr


# -- fatal task error --------------------------------------------------------------------


def test_a_fatal_task_error_stops_the_worker_with_exit_3_and_no_gevent_traceback(
    tmp_path: Path
) -> None:
    (tmp_path / f"{PROVIDER_MODULE}.py").write_text(PROVIDER_SOURCE)
    write_ini(tmp_path, (
        "[consumer]\n"
        "concurrency = 4\n"
        "shutdown_timeout = 5\n"
        "[provider]\n"
        f"type = {PROVIDER_MODULE}:FatalProvider\n"
        "jobs = 50\n"
        "report = provider-report.json\n"
    ))

    search_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = cli("run", "-c", "worker.ini", cwd=tmp_path, timeout=30,
               env={"PYTHONPATH": search_path})

    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "async-consumer: stopped: the ledger went read-only" in done.stderr
    assert "failed with" not in done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads((tmp_path / "provider-report.json").read_text())
    # The first batch fills the four slots; nothing more is taken once one is fatal.
    assert report["handed_out"] == 4
    assert report["outcomes"] == ["fatal"] * 4
