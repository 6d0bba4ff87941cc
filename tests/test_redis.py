"""The Redis provider against a real Redis on 127.0.0.1:6379: worker processes, real
signals, a TCP proxy for network faults, and the producer API without gevent.

Each test uses a queue name of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis

from async_consumer.backoff import Backoff
from async_consumer.consumer import AsyncConsumer
from async_consumer.redis_provider import (
    SETTLE_SCRIPT,
    Keys,
    RedisOptions,
    RedisProvider,
    RedisPublisher,
    connect,
    ensure_group,
)
from async_consumer.delivery import LOST_DELIVERY_GRACE
from conftest import Target, cli, read_results, stop_process
from redis_support import (
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    EchoPromise,
    capturing_logger,
    client,
    delete_queue,
    echo_transformer,
    http_jobs,
    line_count,
    new_queue_name,
    queue_is_drained,
    stream_entries,
    wait_until,
    worker_ini,
)
from tcp_proxy import TcpProxy

StartWorker = Callable[..., subprocess.Popen]


@pytest.fixture
def queue(redis_server: None) -> Iterator[str]:
    """A fresh queue name; its stream, delayed set and dead letters go afterwards."""
    name = new_queue_name()
    yield name
    delete_queue(name)


@pytest.fixture
def start_worker(tmp_path: Path, queue: str) -> Iterator[StartWorker]:
    """Start ``async-consumer run`` processes; any still alive at the end are killed
    by PID before the queue's keys are deleted."""
    started: list[subprocess.Popen] = []

    def start(ini: str = "worker.ini", label: str = "worker") -> subprocess.Popen:
        with open(tmp_path / f"{label}.out", "w") as out, \
                open(tmp_path / f"{label}.err", "w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "async_consumer", "run", "-c", ini],
                cwd=tmp_path, stdout=out, stderr=err,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process, signal.SIGKILL)


def wait_for_start(tmp_path: Path, label: str, process: subprocess.Popen) -> None:
    err = tmp_path / f"{label}.err"
    wait_until(lambda: "consumer starting" in err.read_text() or process.poll() is not None,
               f"worker {label} to start")
    assert process.poll() is None, err.read_text()


def log_lines(tmp_path: Path, label: str, level: str, text: str) -> list[str]:
    """Lines of a worker's log at ``level`` that contain ``text``."""
    lines = (tmp_path / f"{label}.err").read_text().splitlines()
    return [line for line in lines if f"| {level}" in line and text in line]


def publish(queue: str, messages: list[tuple[str, str, int]]) -> None:
    with RedisPublisher(client(), queue) as publisher:
        assert publisher.publish_many(messages) == len(messages)


def results_by_id(paths: list[Path]) -> Counter[str]:
    return Counter(record["id"] for path in paths for record in read_results(path))


# -- 1. throughput and sharing -----------------------------------------------------------

FLEET_JOBS = 5000
FLEET_CONCURRENCY = 50


def run_fleet(tmp_path: Path, queue: str, target: Target, start_worker: StartWorker,
              size: int) -> tuple[float, list[list[dict]]]:
    """Start ``size`` workers, publish the jobs, time the drain, stop them by SIGTERM."""
    labels = [f"w{number}" for number in range(1, size + 1)]
    processes = []
    for label in labels:
        worker_ini(tmp_path, queue, name=f"{label}.ini", results=f"{label}.jsonl",
                   concurrency=FLEET_CONCURRENCY)
        processes.append(start_worker(ini=f"{label}.ini", label=label))
    for label, process in zip(labels, processes):
        wait_for_start(tmp_path, label, process)

    ids = [f"job-{number:05d}" for number in range(FLEET_JOBS)]
    started = time.monotonic()
    publish(queue, http_jobs(ids, f"{target.url}/ok"))
    paths = [tmp_path / f"{label}.jsonl" for label in labels]
    wait_until(lambda: sum(map(line_count, paths)) >= FLEET_JOBS, "every result line", 120)
    rate = FLEET_JOBS / (time.monotonic() - started)
    wait_until(lambda: queue_is_drained(queue), "the stream to drain")

    for process in processes:
        process.send_signal(signal.SIGTERM)
    for label, process in zip(labels, processes):
        assert process.wait(timeout=15) == 0, (tmp_path / f"{label}.err").read_text()
    return rate, [read_results(path) for path in paths]


@pytest.mark.parametrize("size", [1, 3], ids=["1-worker", "3-workers"])
def test_5000_jobs_through_worker_processes_each_give_exactly_one_result_line(
    redis_server: None, tmp_path: Path, queue: str, fresh_target: Target,
    start_worker: StartWorker, size: int
) -> None:
    rate, per_worker = run_fleet(tmp_path, queue, fresh_target, start_worker, size)

    print(f"\n{size} worker(s), concurrency {FLEET_CONCURRENCY} each: {FLEET_JOBS} jobs "
          f"at {rate:.0f} jobs/s")
    seen = Counter(record["id"] for records in per_worker for record in records)
    assert set(seen) == {f"job-{number:05d}" for number in range(FLEET_JOBS)}
    assert [job_id for job_id, count in seen.items() if count > 1] == []
    assert {record["status"] for records in per_worker for record in records} == {"ok"}
    assert fresh_target.stats()["total"] == FLEET_JOBS
    shares = [len(records) for records in per_worker]
    assert min(shares) >= FLEET_JOBS // (size * 10), f"the work was not shared: {shares}"


# -- 2. chaos ----------------------------------------------------------------------------

CHAOS_JOBS = 1500
CHAOS_CONCURRENCY = 10
KILLS = 2
#: Result lines written but not yet acknowledged when a worker dies: one flush holds
#: about 50 ms of one worker's output, ~5 jobs here.
FLUSH_MARGIN = 20
KILL_DELAY_SECONDS = 0.3


def test_killed_and_stopped_workers_lose_nothing_and_repeat_only_in_flight_jobs(
    redis_server: None, tmp_path: Path, queue: str, fresh_target: Target,
    start_worker: StartWorker
) -> None:
    for label in "abc":
        worker_ini(tmp_path, queue, name=f"{label}.ini", results=f"{label}.jsonl",
                   concurrency=CHAOS_CONCURRENCY)
    ids = [f"chaos-{number:04d}" for number in range(CHAOS_JOBS)]
    # 50 to 150 ms, spread so that jobs do not end in waves aligned with the flushes.
    publish(queue, [(job_id, json.dumps({"id": job_id, "url": f"{fresh_target.url}/delay/"
                                         f"{50 + number * 37 % 101}"}), 5)
                    for number, job_id in enumerate(ids)])
    paths = [tmp_path / f"{label}.jsonl" for label in "abc"]
    done = lambda: sum(map(line_count, paths))  # noqa: E731

    workers = {label: start_worker(ini=f"{label}.ini", label=label) for label in "abc"}
    for kill in range(1, KILLS + 1):
        wait_until(lambda: done() >= 150 * (2 * kill - 1), f"{150 * (2 * kill - 1)} results")
        # Lines appear right after a flush: wait well into the next interval, so that
        # finished jobs wait in the buffer when the worker dies.
        time.sleep(KILL_DELAY_SECONDS)
        workers["a"].send_signal(signal.SIGKILL)
        assert workers["a"].wait(timeout=10) == -signal.SIGKILL
        workers["a"] = start_worker(ini="a.ini", label=f"a-restart-{kill}")

    wait_until(lambda: done() >= 750, "750 results")
    workers["b"].send_signal(signal.SIGTERM)
    assert workers["b"].wait(timeout=15) == 0, (tmp_path / "b.err").read_text()
    killed_at_lines = done()
    workers["b"] = start_worker(ini="b.ini", label="b-restart")
    assert killed_at_lines < CHAOS_JOBS, "the run ended before the faults"

    # A killed worker's entries come back once idle for claim_idle_time (36 s).
    wait_until(lambda: set(results_by_id(paths)) >= set(ids), "every job's result", 90)
    wait_until(lambda: queue_is_drained(queue), "the stream to drain")
    for process in workers.values():
        process.send_signal(signal.SIGTERM)
    for process in workers.values():
        assert process.wait(timeout=15) == 0

    records = [record for path in paths for record in read_results(path)]
    seen = Counter(record["id"] for record in records)
    duplicates = sum(count - 1 for count in seen.values())
    repeated_requests = fresh_target.stats()["total"] - CHAOS_JOBS
    reclaimed = [record["id"] for record in records if record["attempts"] > 1]
    print(f"\nchaos: {duplicates} duplicate result line(s), {repeated_requests} repeated "
          f"request(s), {len(reclaimed)} job(s) finished on a reclaimed delivery")
    assert set(seen) == set(ids)
    assert {record["status"] for record in records} == {"ok"}
    assert duplicates <= KILLS * FLUSH_MARGIN
    assert 0 <= repeated_requests <= KILLS * (CHAOS_CONCURRENCY + FLUSH_MARGIN)
    assert 0 < len(reclaimed) <= KILLS * (CHAOS_CONCURRENCY + FLUSH_MARGIN)
    claims = [line for label in ("a-restart-2", "b-restart", "c")
              for line in log_lines(tmp_path, label, "INFO", "claimed")]
    assert claims, "no live worker claimed the killed worker's entries"


# -- 3. network faults -------------------------------------------------------------------

FAULT_JOBS = 400


@pytest.mark.parametrize("fault", ["cut", "stall", "slow"])
def test_a_worker_rides_out_network_faults_between_it_and_redis(
    redis_server: None, tmp_path: Path, queue: str, fresh_target: Target,
    start_worker: StartWorker, fault: str
) -> None:
    proxy = TcpProxy(REDIS_HOST, REDIS_PORT).start()
    try:
        worker_ini(tmp_path, queue, url=f"redis://127.0.0.1:{proxy.port}/0")
        ids = [f"{fault}-{number:03d}" for number in range(FAULT_JOBS)]
        publish(queue, http_jobs(ids, f"{fresh_target.url}/delay/30"))
        worker = start_worker()
        results = tmp_path / "results.jsonl"
        wait_until(lambda: line_count(results) >= 60, "the first results")

        inject_fault(proxy, fault, tmp_path)

        # Well before claim_idle_time (36 s): entries whose delivery was cut off are
        # recovered by the worker itself, not left for a claim.
        wait_until(lambda: line_count(results) >= FAULT_JOBS, "every result", 25)
        wait_until(lambda: queue_is_drained(queue), "the stream to drain")
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, (tmp_path / "worker.err").read_text()
    finally:
        proxy.stop()

    seen = results_by_id([results])
    assert set(seen) == set(ids)
    assert [job_id for job_id, count in seen.items() if count > 1] == []
    assert fresh_target.stats()["total"] == FAULT_JOBS
    warnings = log_lines(tmp_path, "worker", "WARNING", "lost redis")
    assert len(warnings) == (0 if fault == "slow" else 1), warnings
    assert "Traceback" not in (tmp_path / "worker.err").read_text()


SOCKET_TIMEOUT = 2.0


def inject_fault(proxy: TcpProxy, fault: str, tmp_path: Path) -> None:
    lost = lambda: log_lines(tmp_path, "worker", "WARNING", "lost redis")  # noqa: E731
    back = lambda: log_lines(tmp_path, "worker", "INFO", "reachable again")  # noqa: E731
    if fault == "cut":
        proxy.cut()
        wait_until(lambda: bool(back()), "the reconnection", 10)
    elif fault == "stall":
        proxy.stall()
        noticed = wait_until(lambda: bool(lost()), "the stall to be noticed", 10)
        assert noticed <= SOCKET_TIMEOUT + 1.5, f"the stall was noticed after {noticed:.1f}s"
        time.sleep(1.0)
        proxy.resume()
        again = wait_until(lambda: bool(back()), "the reconnection", 10)
        print(f"\nstall noticed after {noticed:.1f}s; reconnected {again:.1f}s after resuming")
        assert again <= SOCKET_TIMEOUT + 1.5, f"reconnected {again:.1f}s after the stall"
    else:
        proxy.slow(0.05)
        time.sleep(2.0)
        proxy.resume()


# -- 4. poison messages ------------------------------------------------------------------

POISON_REASONS = {
    "not-json": "not JSON",
    "wrong-shape": "a job must be a JSON object",
    "wrong-keys": "unknown key(s) uri",
    "no-payload": "no payload field",
    "bad-utf8": "not UTF-8",
    "always-503": "gave up after 3 attempt(s)",
    "worker-killer": f"no outcome after {3 + LOST_DELIVERY_GRACE} deliveries",
}
POISON_ATTEMPTS = {"always-503": 3, "worker-killer": 3 + LOST_DELIVERY_GRACE}


def add_lost_deliveries(queue: str, job_id: str, url: str, deliveries: int) -> None:
    """An entry that stopped workers took ``deliveries`` times and never finished: idle
    far longer than claim_idle_time, in the name of a consumer that is gone."""
    keys = Keys.for_queue(queue)
    with client() as connection:
        ensure_group(connection, keys)
        payload = json.dumps({"id": job_id, "url": url})
        entry_id = connection.xadd(keys.stream, {"id": job_id, "payload": payload,
                                                 "attempts": 0, "max_attempts": 3})
        connection.xreadgroup(keys.group, "ghost", {keys.stream: ">"}, count=1)
        connection.xclaim(keys.stream, keys.group, "ghost", 0, [entry_id], idle=10 ** 7,
                          retrycount=deliveries, force=True, justid=True)


def add_raw_poison(queue: str) -> None:
    raw: dict[str, dict[str, Any]] = {
        "not-json": {"payload": "this is not json"},
        "wrong-shape": {"payload": '["a", "list"]'},
        "wrong-keys": {"payload": '{"id": "wrong-keys", "uri": "http://127.0.0.1:9/"}'},
        "no-payload": {"body": "x"},
        "bad-utf8": {"payload": b"\xff\xfe{"},
    }
    with client() as connection:
        for job_id, fields in raw.items():
            connection.xadd(queue, {"id": job_id, "attempts": 0, "max_attempts": 3, **fields})


def test_poison_messages_reach_the_dead_letters_and_can_be_requeued(
    redis_server: None, tmp_path: Path, queue: str, fresh_target: Target,
    start_worker: StartWorker
) -> None:
    worker_ini(tmp_path, queue, concurrency=5)
    # Claimed, each is delivered once more: the victim of crashes still runs (within
    # the grace), the worker killer has had its grace and is buried unrun.
    add_lost_deliveries(queue, "crash-victim", f"{fresh_target.url}/ok",
                        3 + LOST_DELIVERY_GRACE - 1)
    add_lost_deliveries(queue, "worker-killer", f"{fresh_target.url}/ok",
                        3 + LOST_DELIVERY_GRACE)
    add_raw_poison(queue)
    good = [f"good-{number:02d}" for number in range(40)]
    publish(queue, [("always-503", json.dumps({"id": "always-503",
                                               "url": f"{fresh_target.url}/status/503"}), 3)])
    publish(queue, http_jobs(good, f"{fresh_target.url}/ok"))

    worker = start_worker()
    dead = Keys.for_queue(queue).dead
    wait_until(lambda: len(stream_entries(dead)) == len(POISON_REASONS), "the dead letters")
    wait_until(lambda: queue_is_drained(queue), "the stream to drain")
    assert worker.poll() is None, "a poison message stopped the worker"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0

    records = {record["id"]: record for record in read_results(tmp_path / "results.jsonl")}
    assert {job_id for job_id in good if records[job_id]["status"] == "ok"} == set(good)
    assert records["crash-victim"]["status"] == "ok"
    assert records["crash-victim"]["attempts"] == 3 + LOST_DELIVERY_GRACE
    for job_id, reason in POISON_REASONS.items():
        assert records[job_id]["status"] == "failed"
        assert reason in records[job_id]["error"], records[job_id]
        assert records[job_id]["attempts"] == POISON_ATTEMPTS.get(job_id, 1), records[job_id]
    assert fresh_target.stats()["total"] == len(good) + 3 + 1

    check_dead_commands(tmp_path, queue)


def check_dead_commands(tmp_path: Path, queue: str) -> None:
    listed = cli("dead", "list", "-c", "worker.ini", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {letter["id"]: letter["reason"] for letter in letters}.keys() == POISON_REASONS.keys()
    for letter in letters:
        assert POISON_REASONS[letter["id"]] in letter["reason"]

    refused = cli("dead", "requeue", "not-a-ref", "-c", "worker.ini", cwd=tmp_path)
    assert refused.returncode == 1 and "stream ids" in refused.stderr
    one = cli("dead", "requeue", letters[0]["ref"], "-c", "worker.ini", cwd=tmp_path)
    assert one.returncode == 0 and "requeued 1 job(s)" in one.stdout, one.stderr
    rest = cli("dead", "requeue", "-c", "worker.ini", "--all", cwd=tmp_path)
    assert rest.returncode == 0 and "requeued 6 job(s)" in rest.stdout, rest.stderr

    back = stream_entries(queue)
    assert sorted(entry["id"] for entry in back) == sorted(POISON_REASONS)
    assert {entry["attempts"] for entry in back} == {"0"}
    assert stream_entries(Keys.for_queue(queue).dead) == []


# -- 5. graceful stops -------------------------------------------------------------------

def test_sigterm_lets_in_flight_jobs_finish_and_leaves_the_rest_untouched(
    redis_server: None, tmp_path: Path, queue: str, fresh_target: Target,
    start_worker: StartWorker
) -> None:
    worker_ini(tmp_path, queue, concurrency=5, task_timeout=3, claim_idle_time=38)
    ids = [f"slow-{number:02d}" for number in range(12)]
    publish(queue, http_jobs(ids, f"{fresh_target.url}/delay/1500"))

    worker = start_worker()
    wait_until(lambda: fresh_target.stats()["in_flight"] == 5, "five requests in flight")
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(timeout=15) == 0, (tmp_path / "worker.err").read_text()
    assert time.monotonic() - signalled < 3.0

    finished = read_results(tmp_path / "results.jsonl")
    assert len(finished) == 5
    assert {record["status"] for record in finished} == {"ok"}
    assert min(record["elapsed_ms"] for record in finished) >= 1400
    left = stream_entries(queue)
    assert sorted(entry["id"] for entry in left) == sorted(
        set(ids) - {record["id"] for record in finished})
    assert {entry["attempts"] for entry in left} == {"0"}
    with RedisPublisher(client(), queue) as publisher:
        assert publisher.counts()["pending"] == 0

    worker_ini(tmp_path, queue, name="wide.ini", concurrency=20, task_timeout=3,
               claim_idle_time=38)
    rerun = start_worker(ini="wide.ini", label="wide")
    wait_until(lambda: line_count(tmp_path / "results.jsonl") >= len(ids), "every result")
    wait_until(lambda: queue_is_drained(queue), "the stream to drain")
    rerun.send_signal(signal.SIGTERM)
    assert rerun.wait(timeout=15) == 0
    seen = results_by_id([tmp_path / "results.jsonl"])
    assert seen == Counter({job_id: 1 for job_id in ids})
    assert fresh_target.stats()["total"] == len(ids)


def test_jobs_cancelled_at_the_shutdown_timeout_go_back_with_their_attempt_unspent(
    redis_server: None, tmp_path: Path, queue: str, fresh_target: Target,
    start_worker: StartWorker
) -> None:
    worker_ini(tmp_path, queue, concurrency=5, task_timeout=30, claim_idle_time=65,
               shutdown_timeout=1, max_attempts=1)
    # With max_attempts 1, a cancelled job that had spent its attempt would be
    # dead-lettered unrun on its next delivery.
    ids = [f"hung-{number}" for number in range(8)]
    publish(queue, [(job_id, json.dumps({"id": job_id, "url": f"{fresh_target.url}/hang"}), 1)
                    for job_id in ids])

    worker = start_worker()
    wait_until(lambda: fresh_target.stats()["in_flight"] == 5, "five hanging requests")
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(timeout=15) == 0, (tmp_path / "worker.err").read_text()
    assert time.monotonic() - signalled < 4.0
    assert "cancelling 5 task(s)" in (tmp_path / "worker.err").read_text()
    assert read_results(tmp_path / "results.jsonl") == []

    assert {entry["attempts"] for entry in stream_entries(queue)} == {"0"}
    logger, _ = capturing_logger("redis-provider")
    provider = RedisProvider(RedisOptions(queue=queue, claim_idle_time=65), echo_transformer,
                             logger=logger)
    try:
        attempts = {promise.id: promise.attempt for promise in provider.get_batch(100)}
    finally:
        provider.close()
    assert attempts == {job_id: 1 for job_id in ids}


# -- 6. field cases, in process ----------------------------------------------------------

class TimesOutOnce(redis.Redis):
    """A client whose first XREADGROUP fails as a read past socket_timeout does."""

    failures = 0

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        if TimesOutOnce.failures == 0:
            TimesOutOnce.failures += 1
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return super().xreadgroup(*args, **kwargs)


class LosesOneReply(redis.Redis):
    """A client whose first settle script call runs on the server but whose reply is
    lost, as when the connection drops just after the command went out."""

    lost = 0
    settle_sha = hashlib.sha1(SETTLE_SCRIPT.encode()).hexdigest()

    def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        answer = super().evalsha(*args, **kwargs)
        if LosesOneReply.lost == 0 and args[0] == self.settle_sha:
            LosesOneReply.lost += 1
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return answer


def in_process_consumer(queue: str, client_class: type[redis.Redis],
                        role: str) -> tuple[AsyncConsumer, RedisProvider, Any]:
    options = RedisOptions(url=REDIS_URL, queue=queue, poll_timeout=0.5, socket_timeout=2,
                           claim_idle_time=36, reconnect_max=1)

    def make_client(client_role: str) -> redis.Redis:
        if client_role != role:
            return connect(options, f"test:{client_role}", client_role == "reader")
        return client_class.from_url(REDIS_URL, socket_timeout=2,
                                     single_connection_client=client_role == "reader")

    logger, handler = capturing_logger("redis-provider")
    provider = RedisProvider(options, echo_transformer, backoff=Backoff(0.05, 1.0),
                             logger=logger, client_factory=make_client)
    consumer_logger, _ = capturing_logger("consumer")
    consumer = AsyncConsumer(provider, 5, 0.05, consumer_logger, task_timeout=5,
                             idle_poll_max=0.1, handle_signals=False)
    return consumer, provider, handler


def test_a_redis_timeout_on_a_read_is_one_warning_and_the_job_still_runs(
    redis_server: None, queue: str
) -> None:
    TimesOutOnce.failures = 0
    EchoPromise.runs = {}
    publish(queue, [("after-timeout", json.dumps({"id": "after-timeout"}), 3)])
    consumer, provider, log = in_process_consumer(queue, TimesOutOnce, "reader")

    with gevent.Timeout(20):
        consumer.consume(until_empty=True)

    assert TimesOutOnce.failures == 1
    assert EchoPromise.runs == {"after-timeout": 1}
    assert provider.counts.ok == 1
    warnings = log.at(30)
    assert len(warnings) == 1 and "TimeoutError" in warnings[0], warnings
    assert any("reachable again" in line for line in log.at(20))
    assert log.at(40) == []
    assert queue_is_drained(queue)


def test_a_lost_reply_to_settlements_is_replayed_without_a_second_effect(
    redis_server: None, queue: str
) -> None:
    LosesOneReply.lost = 0
    EchoPromise.runs = {}
    retried = {"id": "retried", "fail_first": True, "retry_delay": 0.5}
    publish(queue, [("retried", json.dumps(retried), 3),
                    ("buried", json.dumps({"id": "buried", "fail_first": True}), 1)])
    consumer, provider, log = in_process_consumer(queue, LosesOneReply, "writer")

    with gevent.Timeout(20):
        consumer.consume(until_empty=True)

    # The first settle call retried one job and dead-lettered the other, and its reply
    # was lost; the replay must find both entries acknowledged and add nothing. The
    # consumer must also wait for the delayed retry before it calls the queue empty.
    assert LosesOneReply.lost == 1
    assert EchoPromise.runs == {"retried": 2, "buried": 1}
    assert provider.counts.retried == 1 and provider.counts.ok == 1
    assert provider.counts.dead_lettered == 1
    assert [entry["id"] for entry in stream_entries(Keys.for_queue(queue).dead)] == ["buried"]
    assert len(log.at(30)) == 1
    assert queue_is_drained(queue)


def test_plain_acknowledgements_and_other_outcomes_settle_together_and_replay_safely(
    redis_server: None, queue: str
) -> None:
    # Plain acknowledgements travel as bare entry ids ahead of the other outcomes in
    # one settle call; a replay after the lost reply must find every entry settled.
    LosesOneReply.lost = 0
    EchoPromise.runs = {}
    plain = [f"plain-{n}" for n in range(30)]
    publish(queue, [(job_id, json.dumps({"id": job_id}), 3) for job_id in plain[:15]]
            + [("retried", json.dumps({"id": "retried", "fail_first": True}), 3),
               ("buried", json.dumps({"id": "buried", "fail_first": True}), 1)]
            + [(job_id, json.dumps({"id": job_id}), 3) for job_id in plain[15:]])
    consumer, provider, _ = in_process_consumer(queue, LosesOneReply, "writer")

    with gevent.Timeout(20):
        consumer.consume(until_empty=True)

    assert LosesOneReply.lost == 1
    assert EchoPromise.runs == {**{job_id: 1 for job_id in plain}, "retried": 2, "buried": 1}
    assert provider.counts.ok == 31 and provider.counts.retried == 1
    assert [entry["id"] for entry in stream_entries(Keys.for_queue(queue).dead)] == ["buried"]
    assert queue_is_drained(queue)
    with client() as connection:
        assert connection.xpending(queue, queue)["pending"] == 0


def test_a_retry_starts_when_it_is_due_not_an_idle_pause_later(
    redis_server: None, queue: str
) -> None:
    EchoPromise.runs, EchoPromise.started = {}, {}
    retried = {"id": "on-time", "fail_first": True, "retry_delay": 0.4}
    publish(queue, [("on-time", json.dumps(retried), 3)])
    consumer, provider, _ = in_process_consumer(queue, redis.Redis, "none")
    consumer.idle_poll_max = 3.0
    assert provider.seconds_until_ready() is None

    with gevent.Timeout(20):
        consumer.consume(until_empty=True)

    first, second = EchoPromise.started["on-time"]
    print(f"\nretry due after 0.4s started after {second - first:.2f}s")
    assert 0.4 <= second - first < 0.4 + 0.3
    assert provider.seconds_until_ready() is None


def test_describe_masks_the_password_of_the_url(redis_server: None, queue: str) -> None:
    options = RedisOptions(url="redis://:s3cret@127.0.0.1:6379/0", queue=queue)
    logger, _ = capturing_logger("redis-provider")
    provider = RedisProvider(options, echo_transformer, logger=logger)
    try:
        described = provider.describe()
    finally:
        provider.close()

    assert "s3cret" not in described
    assert "redis://:***@127.0.0.1:6379/0" in described
    assert provider.consumer in described


def test_entries_added_before_any_consumer_group_existed_are_delivered(
    redis_server: None, queue: str
) -> None:
    with client() as connection:
        connection.xadd(queue, {"id": "early", "payload": json.dumps({"id": "early"}),
                                "attempts": 0, "max_attempts": 3})
    logger, _ = capturing_logger("redis-provider")
    provider = RedisProvider(RedisOptions(queue=queue, poll_timeout=0.5), echo_transformer,
                             logger=logger)
    try:
        delivered = [promise.id for promise in provider.get_batch(10)]
    finally:
        provider.close()

    assert delivered == ["early"]


# -- 7. the producer API -----------------------------------------------------------------

PRODUCER_SCRIPT = """\
import json, sys
from async_consumer import producer

published = producer.enqueue(
    [{"id": "p1", "url": "http://127.0.0.1:9/a"},
     {"id": "p2", "url": "http://127.0.0.1:9/b", "max_attempts": 2}], sys.argv[1])
try:
    producer.enqueue([{"id": "fine", "url": "http://127.0.0.1:9/c"},
                      {"id": "bad", "url": "ftp://127.0.0.1/"}], sys.argv[1])
    refused = None
except producer.JobError as error:
    refused = str(error)
monkey = sys.modules.get("gevent.monkey")
patched = bool(monkey and monkey.is_module_patched("socket"))
print(json.dumps({"published": published, "refused": refused, "patched": patched}))
"""


def test_the_producer_publishes_from_plain_synchronous_code(
    redis_server: None, tmp_path: Path, queue: str
) -> None:
    worker_ini(tmp_path, queue)

    done = subprocess.run([sys.executable, "-c", PRODUCER_SCRIPT, "worker.ini"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["published"] == 2
    assert report["patched"] is False
    assert report["refused"].startswith("job 2: 'url' must be")
    entries = stream_entries(queue)
    assert [(entry["id"], entry["attempts"], entry["max_attempts"]) for entry in entries] == [
        ("p1", "0", "5"), ("p2", "0", "2")]
    assert json.loads(entries[0]["payload"])["url"] == "http://127.0.0.1:9/a"


def test_the_cli_enqueues_all_lines_or_none_and_check_shows_the_counts(
    redis_server: None, tmp_path: Path, queue: str
) -> None:
    worker_ini(tmp_path, queue)
    good = "".join(json.dumps({"id": f"c{n}", "url": "http://127.0.0.1:9/"}) + "\n"
                   for n in range(3))

    refused = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path,
                  stdin=good + '{"url": "nope"}\n')
    accepted = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path, stdin=good)
    checked = cli("check", "-c", "worker.ini", cwd=tmp_path)

    assert refused.returncode == 1 and "nothing was enqueued" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert f"accepted 3 job(s) into redis queue '{queue}'" in accepted.stdout
    assert [entry["id"] for entry in stream_entries(queue)] == ["c0", "c1", "c2"]
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["queue"] == {"stream": 3, "pending": 0, "delayed": 0,
                                                   "dead": 0}


def test_the_cli_reports_an_unreachable_redis_in_one_line(
    redis_server: None, tmp_path: Path, queue: str
) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    worker_ini(tmp_path, queue, url="redis://:s3cret@127.0.0.1:1/0")

    done = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path,
               stdin=json.dumps({"url": "http://127.0.0.1:9/"}) + "\n")

    assert done.returncode == 1
    assert "the queue is not usable: redis redis://:***@127.0.0.1:1/0 is unavailable" in (
        done.stderr)
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
