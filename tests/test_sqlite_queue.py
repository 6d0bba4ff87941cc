"""Tests for the SQLite job queue, on real files and, where it matters, real processes.

Most timing is driven through a fake clock so that delays and lease expiry are exact
and cost no sleeping; the lease and lock tests that must cross processes use real time
with short intervals.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from async_consumer.errors import ConfigError
from async_consumer.sqlite_queue import DeadJob, QueueError, QueuedJob, SQLiteQueue

# Claims in a loop until the queue is empty and prints the ids it got. The "go" file
# is a start line, so that the processes really do compete instead of finishing one
# after the other as they happen to start.
CLAIM_UNTIL_EMPTY = r"""
import json, os, sys, time
from async_consumer.sqlite_queue import SQLiteQueue

path, go = sys.argv[1], sys.argv[2]
queue = SQLiteQueue(path)
print("ready", flush=True)

give_up = time.monotonic() + 10
while not os.path.exists(go):
    if time.monotonic() > give_up:
        sys.exit(3)
    time.sleep(0.001)

claimed = []
while True:
    jobs = queue.claim(5)
    if not jobs:
        break
    claimed.extend(job.job_id for job in jobs)
    queue.complete_many(job.job_id for job in jobs)
print(json.dumps(claimed), flush=True)
"""

# Under gevent, waits for a write lock that another connection holds for 0.5 s while a
# greenlet ticks every 10 ms, and prints how many ticks happened during the wait.
WAIT_UNDER_GEVENT = r"""
from gevent import monkey
monkey.patch_all()
import sqlite3, sys
import gevent
from async_consumer.sqlite_queue import SQLiteQueue

queue = SQLiteQueue(sys.argv[1], busy_timeout_seconds=10)
blocker = sqlite3.connect(sys.argv[1], isolation_level=None)
blocker.execute("BEGIN IMMEDIATE")
ticks = []

def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.01)

def unblock():
    gevent.sleep(0.5)
    blocker.execute("COMMIT")

gevent.spawn(tick)
gevent.spawn(unblock)
queue.put_many([("a", "{}", 1)])
print(len(ticks), flush=True)
"""

# Claims one job, says which, then hangs until it is killed.
CLAIM_AND_HANG = r"""
import sys, time
from async_consumer.sqlite_queue import SQLiteQueue

queue = SQLiteQueue(sys.argv[1])
jobs = queue.claim(1)
print(jobs[0].job_id if jobs else -1, flush=True)
time.sleep(60)
"""


class FakeClock:
    """A ``time.time`` stand-in that only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.sqlite3"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(db_path: Path, clock: FakeClock):
    q = SQLiteQueue(db_path, lease_seconds=60, clock=clock)
    yield q
    q.close()


def put(queue: SQLiteQueue, count: int, max_attempts: int = 3) -> None:
    stored = queue.put_many((f"k{i}", json.dumps({"id": f"k{i}"}), max_attempts)
                            for i in range(count))
    assert stored == count


# -- basic flow ----------------------------------------------------------------------


def test_put_claim_complete(queue: SQLiteQueue, clock: FakeClock) -> None:
    put(queue, 3)

    first = queue.claim(2)
    assert [job.key for job in first] == ["k0", "k1"]
    assert first[0] == QueuedJob(job_id=first[0].job_id, key="k0", payload='{"id": "k0"}',
                                 attempt=1, max_attempts=3, enqueued_at=clock.now,
                                 last_error=None)

    rest = queue.claim(10)
    assert [job.key for job in rest] == ["k2"]
    assert queue.claim(10) == []

    assert queue.complete_many(job.job_id for job in first + rest) == 3
    assert not queue.has_pending()
    assert queue.counts() == {"ready": 0, "delayed": 0, "leased": 0, "dead": 0}


def test_batches_larger_than_one_statement_are_leased_and_deleted_whole(
    queue: SQLiteQueue, clock: FakeClock, db_path: Path
) -> None:
    put(queue, 1300)

    claimed = queue.claim(1200)
    assert [job.key for job in claimed] == [f"k{i}" for i in range(1200)]
    assert {job.attempt for job in claimed} == {1}
    assert queue.counts() == {"ready": 100, "delayed": 0, "leased": 1200, "dead": 0}

    stranger = SQLiteQueue(db_path, clock=clock)
    assert stranger.complete_many(job.job_id for job in claimed) == 0
    stranger.close()
    assert queue.complete_many(job.job_id for job in claimed[:1100]) == 1100
    assert queue.counts() == {"ready": 100, "delayed": 0, "leased": 100, "dead": 0}
    assert queue.complete_many(job.job_id for job in claimed) == 100
    assert [job.key for job in queue.claim(1000)] == [f"k{i}" for i in range(1200, 1300)]


def test_put_many_stores_nothing_when_an_item_is_bad(queue: SQLiteQueue) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        queue.put_many([("a", "{}", 3), ("b", "{}", 0)])
    with pytest.raises(TypeError):
        queue.put_many([("a", b"{}", 3)])  # type: ignore[list-item]

    assert not queue.has_pending()
    assert queue.put_many([]) == 0


def test_claim_limit_zero_and_negative(queue: SQLiteQueue) -> None:
    put(queue, 1)

    assert queue.claim(0) == []
    with pytest.raises(ValueError):
        queue.claim(-1)
    assert len(queue.claim(1)) == 1


def test_jobs_survive_reopening(db_path: Path, clock: FakeClock) -> None:
    with SQLiteQueue(db_path, clock=clock) as first:
        put(first, 2)

    with SQLiteQueue(db_path, clock=clock) as second:
        assert [job.key for job in second.claim(5)] == ["k0", "k1"]


# -- no double claims ----------------------------------------------------------------


def test_two_instances_never_claim_the_same_job(db_path: Path) -> None:
    put_queue = SQLiteQueue(db_path)
    put(put_queue, 200)
    one, two = SQLiteQueue(db_path), SQLiteQueue(db_path)

    got: dict[SQLiteQueue, list[int]] = {one: [], two: []}
    while True:
        batches = {q: q.claim(7) for q in (one, two)}
        if not any(batches.values()):
            break
        for q, jobs in batches.items():
            got[q].extend(job.job_id for job in jobs)

    assert set(got[one]).isdisjoint(got[two])
    assert len(got[one]) + len(got[two]) == 200
    assert got[one] and got[two]
    for q in (put_queue, one, two):
        q.close()


@pytest.mark.timeout(30)
def test_three_processes_claim_disjoint_sets(db_path: Path, tmp_path: Path) -> None:
    total = 1500
    with SQLiteQueue(db_path) as q:
        put(q, total)
        expected = {job_id for (job_id,) in sqlite3.connect(db_path).execute(
            "SELECT id FROM jobs")}
    go = tmp_path / "go"

    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_UNTIL_EMPTY, str(db_path), str(go)],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [proc.communicate(timeout=20)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert [proc.returncode for proc in procs] == [0, 0, 0]
    claimed = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    everything = [job_id for ids in claimed for job_id in ids]
    assert len(everything) == len(set(everything)), "a job was claimed twice"
    assert set(everything) == expected
    assert sum(1 for ids in claimed if ids) >= 2, "the processes did not overlap"


# -- lost leases ---------------------------------------------------------------------


def test_expired_lease_is_reclaimed(db_path: Path) -> None:
    slow = SQLiteQueue(db_path, lease_seconds=0.2)
    other = SQLiteQueue(db_path, lease_seconds=0.2)
    put(slow, 1)

    [job] = slow.claim(1)
    assert other.claim(1) == []
    time.sleep(0.3)

    [again] = other.claim(1)
    assert again.job_id == job.job_id
    assert again.attempt == 2

    # The late owner's calls must not disturb the job the other worker now holds.
    assert slow.complete_many([job.job_id]) == 0
    slow.retry(job.job_id, 100, "late")
    slow.release(job.job_id)
    slow.dead_letter(job.job_id, "late")
    slow.extend_leases([job.job_id])
    assert other.counts() == {"ready": 0, "delayed": 0, "leased": 1, "dead": 0}

    assert other.complete_many([job.job_id]) == 1
    slow.close()
    other.close()


def test_extend_leases_keeps_the_job(db_path: Path, clock: FakeClock) -> None:
    holder = SQLiteQueue(db_path, lease_seconds=10, clock=clock)
    other = SQLiteQueue(db_path, lease_seconds=10, clock=clock)
    put(holder, 1)
    [job] = holder.claim(1)

    clock.advance(8)
    holder.extend_leases([job.job_id])
    clock.advance(8)
    assert other.claim(1) == []
    assert other.seconds_until_next() == pytest.approx(2)

    clock.advance(2)
    assert [j.job_id for j in other.claim(1)] == [job.job_id]
    holder.close()
    other.close()


@pytest.mark.timeout(30)
def test_dead_process_lease_is_reclaimed_at_once(db_path: Path) -> None:
    queue = SQLiteQueue(db_path, lease_seconds=300)
    put(queue, 1)

    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG, str(db_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        job_id = int(proc.stdout.readline())
        assert job_id > 0
        assert queue.claim(1) == [], "the live process's lease was taken"

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)  # reaped: a zombie would still look alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert queue.counts()["ready"] == 1
    assert queue.seconds_until_next() == 0.0
    [job] = queue.claim(1)
    assert (job.job_id, job.attempt) == (job_id, 2)
    queue.close()


def test_job_whose_last_lease_ran_out_is_still_delivered(queue: SQLiteQueue,
                                                         clock: FakeClock) -> None:
    # The caller, not the queue, decides what to do with a job past its attempts, so
    # that it can record why it gave up; the queue must just say so via `attempt`.
    queue.put_many([("crashy", "{}", 1)])
    queue.claim(1)
    clock.advance(61)

    [again] = queue.claim(1)
    assert (again.attempt, again.max_attempts) == (2, 1)
    queue.dead_letter(again.job_id, "gave up")
    assert [(d.key, d.attempts) for d in queue.list_dead()] == [("crashy", 2)]
    assert not queue.has_pending()


def test_other_instance_cannot_act_on_a_job_it_does_not_hold(db_path: Path,
                                                             clock: FakeClock) -> None:
    holder = SQLiteQueue(db_path, clock=clock)
    stranger = SQLiteQueue(db_path, clock=clock)
    put(holder, 1)
    [job] = holder.claim(1)

    assert stranger.complete_many([job.job_id, 12345]) == 0
    stranger.retry(job.job_id, 0, "nope")
    stranger.release(job.job_id)
    stranger.dead_letter(job.job_id, "nope")

    assert holder.counts() == {"ready": 0, "delayed": 0, "leased": 1, "dead": 0}
    assert holder.complete_many([job.job_id]) == 1
    holder.close()
    stranger.close()


# -- retry, release, dead letters ----------------------------------------------------


def test_retry_waits_for_its_delay(queue: SQLiteQueue, clock: FakeClock) -> None:
    put(queue, 1)
    [job] = queue.claim(1)

    queue.retry(job.job_id, 30, "HTTP 503")
    assert queue.claim(1) == []
    assert queue.counts() == {"ready": 0, "delayed": 1, "leased": 0, "dead": 0}
    assert queue.seconds_until_next() == pytest.approx(30)

    clock.advance(29.9)
    assert queue.claim(1) == []
    clock.advance(0.1)
    [again] = queue.claim(1)
    assert (again.job_id, again.attempt, again.last_error) == (job.job_id, 2, "HTTP 503")


def test_retry_rejects_a_non_finite_delay(queue: SQLiteQueue) -> None:
    put(queue, 1)
    [job] = queue.claim(1)

    with pytest.raises(ValueError):
        queue.retry(job.job_id, float("inf"), "x")

    queue.retry(job.job_id, -5, "negative means now")
    assert queue.claim(1)[0].attempt == 2


def test_release_gives_the_attempt_back(queue: SQLiteQueue) -> None:
    put(queue, 1)
    [job] = queue.claim(1)
    assert job.attempt == 1

    queue.release(job.job_id)
    assert queue.counts()["ready"] == 1
    [again] = queue.claim(1)
    assert again.attempt == 1


def test_dead_letter_list_and_requeue(queue: SQLiteQueue, clock: FakeClock) -> None:
    put(queue, 3, max_attempts=5)
    jobs = queue.claim(3)
    for job in jobs:
        clock.advance(1)
        queue.dead_letter(job.job_id, f"bad {job.key}")

    assert queue.counts() == {"ready": 0, "delayed": 0, "leased": 0, "dead": 3}
    dead = queue.list_dead()
    assert dead[0] == DeadJob(job_id=jobs[0].job_id, key="k0", payload='{"id": "k0"}',
                              attempts=1, max_attempts=5, reason="bad k0", died_at=clock.now - 2)
    assert [d.key for d in dead] == ["k0", "k1", "k2"]
    assert len(queue.list_dead(limit=2)) == 2

    assert queue.requeue_dead([jobs[1].job_id, 99999]) == 1
    assert [d.key for d in queue.list_dead()] == ["k0", "k2"]
    assert queue.requeue_dead() == 2
    assert queue.requeue_dead([]) == 0
    assert queue.list_dead() == []

    back = queue.claim(10)
    assert sorted(job.job_id for job in back) == sorted(job.job_id for job in jobs)
    assert {job.attempt for job in back} == {1}


# -- looking at the queue ------------------------------------------------------------


def test_counts_has_pending_and_seconds_until_next(queue: SQLiteQueue,
                                                   clock: FakeClock) -> None:
    assert queue.seconds_until_next() is None
    assert not queue.has_pending()

    put(queue, 3)
    assert queue.seconds_until_next() == 0.0
    leased, delayed = queue.claim(2)
    queue.retry(delayed.job_id, 20, "later")
    assert queue.counts() == {"ready": 1, "delayed": 1, "leased": 1, "dead": 0}

    queue.claim(1)
    assert queue.has_pending()
    assert queue.seconds_until_next() == pytest.approx(20)

    queue.complete_many([leased.job_id])
    clock.advance(25)
    assert queue.counts() == {"ready": 1, "delayed": 0, "leased": 1, "dead": 0}

    clock.advance(35)  # the third job's lease runs out
    assert queue.counts() == {"ready": 2, "delayed": 0, "leased": 0, "dead": 0}
    assert queue.seconds_until_next() == 0.0


# -- opening and failure modes -------------------------------------------------------


def test_missing_parent_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "queue.sqlite3"

    with pytest.raises(ConfigError) as info:
        SQLiteQueue(path)
    assert str(path.parent) in str(info.value)
    assert str(path) in str(info.value)


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (x)")

    with pytest.raises(ConfigError, match="not a job queue"):
        SQLiteQueue(path)


def test_locked_file_times_out_then_recovers(db_path: Path) -> None:
    queue = SQLiteQueue(db_path, busy_timeout_seconds=0.2)
    blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")

    started = time.monotonic()
    with pytest.raises(QueueError, match="locked"):
        queue.put_many([("a", "{}", 1)])
    assert 0.15 < time.monotonic() - started < 2

    # A lock released while the call is waiting lets it through.
    threading.Timer(0.1, blocker.execute, ["COMMIT"]).start()
    assert queue.put_many([("a", "{}", 1)]) == 1
    blocker.close()
    queue.close()


@pytest.mark.timeout(30)
def test_waiting_for_the_lock_lets_other_greenlets_run(db_path: Path) -> None:
    # SQLite's own busy handler would sleep in C and freeze the gevent hub; the
    # queue's retry loop must sleep cooperatively instead.
    out = subprocess.run([sys.executable, "-c", WAIT_UNDER_GEVENT, str(db_path)],
                         capture_output=True, text=True, timeout=20, check=True).stdout

    assert int(out) >= 10


def test_closed_queue_refuses_calls(queue: SQLiteQueue) -> None:
    queue.close()
    queue.close()

    with pytest.raises(QueueError, match="closed"):
        queue.claim(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_use_after_fork_is_refused(queue: SQLiteQueue) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            queue.counts()
        except QueueError:
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(1)

    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
