"""The RabbitMQ provider and publisher against a real broker on 127.0.0.1: real worker
processes, real signals, a TCP proxy for network faults and an HTTP target of the
tests' own. Every test uses queues of its own and deletes them afterwards."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import gevent
import pika
import pytest

from async_consumer import AsyncConsumer, Promise, RetryLater
from async_consumer.delivery import LOST_DELIVERY_GRACE
from async_consumer.jobs import parse_job
from async_consumer.rabbitmq_provider import (
    PUMP_SECONDS,
    RabbitMQProvider,
    RabbitMQPublisher,
    bucket_for,
    dead_queue_name,
    retry_queue_name,
)
from conftest import Target, cli, read_results
from rabbitmq_helpers import (
    BROKER_URL,
    Workers,
    admin_channel,
    broker_url,
    counts,
    delete_queues,
    line_count,
    new_queue_name,
    peek,
    publish_jobs,
    publish_raw,
    queue_exists,
    wait_until,
    wait_until_idle,
    worker_ini,
)
from tcp_proxy import TcpProxy

LOST = "lost the broker connection"
RECONNECTED = "reconnected to"


@pytest.fixture
def queue(rabbitmq: None, request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name no other test uses; the queue and its companions are deleted after."""
    name = new_queue_name(re.sub(r"[^a-z0-9]+", "-", request.node.name[5:30]).strip("-"))
    yield name
    delete_queues(name)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.stop_all()


def job(job_id: str, url: str, max_attempts: int = 5) -> tuple[str, str, int]:
    return job_id, parse_job({"id": job_id, "url": url}).to_payload(), max_attempts


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, seconds: float = 30) -> int:
    process.send_signal(sig)
    return process.wait(timeout=seconds)


def ids_in(*paths: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in paths:
        seen.update(record["id"] for record in read_results(path))
    return seen


# -- throughput and sharing ----------------------------------------------------------------

MANY_JOBS = 5000
MANY_CONCURRENCY = 50


def run_many(tmp_path: Path, queue: str, target: Target, workers: Workers,
             count: int) -> tuple[list[Path], float, list[dict]]:
    """Run MANY_JOBS /ok jobs through ``count`` workers; stop them once the queue is empty.

    Returns the results files, the seconds from starting the workers to the last
    result line, and every record.
    """
    publish_jobs(queue, [job(f"job-{n:04d}", f"{target.url}/ok") for n in range(MANY_JOBS)])
    files = [tmp_path / f"results-{n}.jsonl" for n in range(count)]
    for n in range(count):
        worker_ini(tmp_path, queue, name=f"w{n}.ini", results=files[n].name,
                   concurrency=MANY_CONCURRENCY)

    started = time.monotonic()
    processes = [workers.start(ini=f"w{n}.ini", label=f"w{n}") for n in range(count)]
    wait_until(lambda: sum(map(line_count, files)) >= MANY_JOBS, f"{MANY_JOBS} result lines")
    seconds = time.monotonic() - started
    wait_until(lambda: counts(queue)["ready"] == 0, "an empty queue")

    for n, process in enumerate(processes):
        assert stop(process) == 0, workers.log(f"w{n}")
    return files, seconds, [record for path in files for record in read_results(path)]


def test_one_worker_runs_every_job_exactly_once(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    _, seconds, records = run_many(tmp_path, queue, fresh_target, workers, 1)

    print(f"\n1 worker: {MANY_JOBS} jobs in {seconds:.2f}s = {MANY_JOBS / seconds:.0f} jobs/s "
          "(from process start to the last result line)")
    seen = Counter(record["id"] for record in records)
    assert len(seen) == MANY_JOBS and set(seen.values()) == {1}
    assert {record["status"] for record in records} == {"ok"}
    assert fresh_target.stats()["total"] == MANY_JOBS
    assert counts(queue) == {"ready": 0, "dead": 0, "consumers": 0}


def test_three_workers_share_the_queue_and_run_every_job_exactly_once(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    files, seconds, records = run_many(tmp_path, queue, fresh_target, workers, 3)

    shares = [line_count(path) for path in files]
    print(f"\n3 workers: {MANY_JOBS} jobs in {seconds:.2f}s = {MANY_JOBS / seconds:.0f} jobs/s "
          f"(from process start to the last result line); shares {shares}")
    seen = Counter(record["id"] for record in records)
    assert len(seen) == MANY_JOBS and set(seen.values()) == {1}
    assert {record["status"] for record in records} == {"ok"}
    assert min(shares) >= MANY_JOBS // 10, shares
    assert fresh_target.stats()["total"] == MANY_JOBS
    assert counts(queue) == {"ready": 0, "dead": 0, "consumers": 0}


# -- chaos -------------------------------------------------------------------------------

CHAOS_JOBS = 5000
CHAOS_CONCURRENCY = 50


def test_killed_and_restarted_workers_lose_nothing_and_repeat_only_in_flight_jobs(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    ids = [f"chaos-{n:04d}" for n in range(CHAOS_JOBS)]
    # Spread from 50 to 150 ms, so that tasks end at every moment rather than in waves.
    publish_jobs(queue, [job(job_id, f"{fresh_target.url}/delay/{50 + n * 37 % 101}")
                         for n, job_id in enumerate(ids)])
    labels = ["a1", "b1", "c1", "a2", "a3", "b2"]
    for label in labels:
        worker_ini(tmp_path, queue, name=f"{label}.ini", results=f"{label}.jsonl",
                   concurrency=CHAOS_CONCURRENCY)
    files = [tmp_path / f"{label}.jsonl" for label in labels]
    live = {label: workers.start(ini=f"{label}.ini", label=label) for label in labels[:3]}

    def after(lines: int) -> None:
        wait_until(lambda: sum(map(line_count, files)) >= lines, f"{lines} result lines")

    after(800)
    assert stop(live.pop("a1"), signal.SIGKILL) == -signal.SIGKILL
    live["a2"] = workers.start(ini="a2.ini", label="a2")
    after(1800)
    assert stop(live.pop("a2"), signal.SIGKILL) == -signal.SIGKILL
    live["a3"] = workers.start(ini="a3.ini", label="a3")
    after(2800)
    assert stop(live.pop("b1")) == 0, workers.log("b1")
    live["b2"] = workers.start(ini="b2.ini", label="b2")
    wait_until(lambda: set(ids_in(*files)) == set(ids), "a result for every job")
    wait_until_idle(queue, files)
    for label, process in live.items():
        assert stop(process) == 0, workers.log(label)

    seen = ids_in(*files)
    killed = ids_in(tmp_path / "a1.jsonl", tmp_path / "a2.jsonl")
    duplicated = {job_id for job_id, count in seen.items() if count > 1}
    repeated_requests = fresh_target.stats()["total"] - CHAOS_JOBS
    print(f"\nchaos: {len(duplicated)} job(s) with a duplicate result line, "
          f"{repeated_requests} repeated request(s); bound {2 * CHAOS_CONCURRENCY}")
    assert set(seen) == set(ids)
    assert sum(seen.values()) - CHAOS_JOBS <= 2 * CHAOS_CONCURRENCY
    assert duplicated <= set(killed), "a duplicate that no killed worker had run"
    assert 0 <= repeated_requests <= 2 * CHAOS_CONCURRENCY
    assert counts(queue) == {"ready": 0, "dead": 0, "consumers": 0}


def test_batched_acknowledgements_never_cover_a_message_that_is_still_running(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    # Acknowledgements go out in batches, with one "multiple" frame for every delivery
    # below the oldest one still unsettled. The early jobs end before the hanging one
    # starts; the late ones end while it runs, so none of theirs may reach past it.
    early = [job(f"early-{n}", f"{fresh_target.url}/ok") for n in range(10)]
    late = [job(f"late-{n}", f"{fresh_target.url}/delay/{n % 7 * 5}") for n in range(60)]
    publish_jobs(queue, early + [job("hanging", f"{fresh_target.url}/hang")] + late)
    worker_ini(tmp_path, queue, concurrency=20, consumer="task_timeout = 60\n")
    worker = workers.start()
    results = tmp_path / "results.jsonl"

    wait_until(lambda: line_count(results) == 70, "a result for every job but one")
    # A batch is acknowledged right after its lines are written; give the last one
    # ample time to leave before the worker dies.
    time.sleep(1.0)
    assert stop(worker, signal.SIGKILL) == -signal.SIGKILL

    wait_until(lambda: counts(queue)["ready"] == 1, "the running job back in the queue")
    assert [message.message_id for message in peek(queue)] == ["hanging"]
    seen = ids_in(results)
    assert set(seen) == {job_id for job_id, _, _ in early + late}
    assert set(seen.values()) == {1}


def test_a_message_that_kills_every_worker_is_dead_lettered_after_its_grace(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    worker_ini(tmp_path, queue, consumer="task_timeout = 60\n")
    publish_jobs(queue, [job("killer", f"{fresh_target.url}/hang", max_attempts=1)])
    deliveries = 1 + LOST_DELIVERY_GRACE

    for run in range(1, deliveries + 1):
        worker = workers.start(label=f"run{run}")
        # The target never ends a /hang request, so the running job shows in the total.
        wait_until(lambda: fresh_target.stats()["total"] == run, f"run {run} of the job")
        assert stop(worker, signal.SIGKILL) == -signal.SIGKILL
    final = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30)

    assert final.returncode == 0, final.stderr
    assert fresh_target.stats()["total"] == deliveries, "a buried job must not run again"
    [dead] = peek(dead_queue_name(queue))
    assert dead.message_id == "killer" and dead.attempts == deliveries
    assert f"no outcome after {deliveries} deliveries" in dead.headers["x-reason"]
    [record] = read_results(tmp_path / "results.jsonl")
    assert (record["id"], record["status"], record["attempts"]) == (
        "killer", "failed", deliveries)


# -- connection faults --------------------------------------------------------------------

FAULT_JOBS = 600


@pytest.mark.parametrize("fault", ["cut", "stall", "slow", "flap"])
def test_the_worker_rides_out_connection_faults_and_loses_nothing(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers,
    fault: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672).start()
    try:
        worker_ini(tmp_path, queue, concurrency=20, url=broker_url(proxy.port),
                   provider="heartbeat = 2\nreconnect_max = 2\n")
        ids = [f"fault-{n:03d}" for n in range(FAULT_JOBS)]
        publish_jobs(queue, [job(job_id, f"{fresh_target.url}/delay/100") for job_id in ids])
        results = tmp_path / "results.jsonl"
        worker = workers.start()
        wait_until(lambda: line_count(results) >= 100, "100 result lines")

        connections = inject(proxy, fault)

        wait_until(lambda: set(ids_in(results)) == set(ids), "a result for every job")
        wait_until_idle(queue, [results])
        assert stop(worker) == 0, workers.log("worker")
    finally:
        proxy.stop()

    log = workers.log("worker")
    seen = ids_in(results)
    failed_reconnects = [int(n) for n in re.findall(r"\((\d+) failed attempt\(s\)\)", log)]
    print(f"\n{fault}: {sum(seen.values()) - FAULT_JOBS} duplicate result line(s), "
          f"failed reconnects {failed_reconnects}, {connections} connection(s) while "
          "flapping")
    assert set(seen) == set(ids)
    assert counts(queue) == {"ready": 0, "dead": 0, "consumers": 0}
    outages = 0 if fault == "slow" else 1
    assert log.count(LOST) == outages, log
    assert log.count("| WARNING") == outages, log
    assert "Traceback" not in log and "| ERROR" not in log, log
    # Three seconds of refused connections: backoff from 0.5 s allows about three.
    assert all(count <= 6 for count in failed_reconnects), "reconnecting in a tight loop"
    if fault == "cut":
        assert failed_reconnects and failed_reconnects[0] >= 1
    if fault == "flap":
        # Each connection dies 0.3 s after it opens: without backoff, a dozen in 4 s.
        assert 2 <= connections <= 7, "reconnecting in a tight loop"
        assert 2 <= log.count(RECONNECTED) <= 7, log
    else:
        assert log.count(RECONNECTED) == outages, log


def inject(proxy: TcpProxy, fault: str) -> int:
    """Apply one fault for a few seconds, then end it; returns connections made while
    flapping."""
    if fault == "flap":
        return flap(proxy, seconds=4.0, lifetime=0.3)
    if fault == "cut":
        proxy.refuse_new = True
        proxy.cut()
        time.sleep(3.0)
        proxy.refuse_new = False
    elif fault == "stall":
        proxy.stall()
        time.sleep(6.0)
        proxy.resume()
    else:
        proxy.slow(0.05)
        time.sleep(4.0)
        proxy.resume()
    return 0


def flap(proxy: TcpProxy, seconds: float, lifetime: float) -> int:
    """Cut every connection ``lifetime`` after it appears, for ``seconds``."""
    accepted_before = proxy.accepted
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proxy.open_connections:
            time.sleep(lifetime)
            proxy.cut()
        time.sleep(0.01)
    return proxy.accepted - accepted_before


def test_a_missing_broker_is_waited_for_and_a_refused_login_is_a_configuration_error(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672).start()
    proxy.refuse_new = True
    try:
        worker_ini(tmp_path, queue, url=broker_url(proxy.port),
                   provider="reconnect_max = 1\n")
        worker = workers.start()
        time.sleep(3.0)
        assert worker.poll() is None, workers.log("worker")
        proxy.refuse_new = False
        publish_jobs(queue, [job(f"late-{n}", f"{fresh_target.url}/ok") for n in range(20)])
        wait_until(lambda: line_count(tmp_path / "results.jsonl") == 20, "20 result lines")
        assert stop(worker) == 0
    finally:
        proxy.stop()

    log = workers.log("worker")
    assert log.count("| WARNING") == 1 and "cannot connect to" in log, log
    assert log.count(RECONNECTED) == 1
    [failed] = [int(n) for n in re.findall(r"\((\d+) failed attempt\(s\)\)", log)]
    assert 1 <= failed <= 6, "reconnecting in a tight loop"
    worker_ini(tmp_path, queue, name="wrong.ini", url=BROKER_URL.replace(":guest@", ":nope@"))
    refused = cli("run", "-c", "wrong.ini", cwd=tmp_path, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "the broker refused the worker" in refused.stderr
    assert "| WARNING" not in refused.stderr, "a refused login is not retried"
    assert "nope" not in refused.stderr and "guest:***@" in refused.stderr


def test_a_queue_declared_with_other_arguments_is_a_configuration_error(
    rabbitmq: None, tmp_path: Path, queue: str
) -> None:
    with admin_channel() as channel:
        channel.queue_declare(queue, durable=True, arguments={"x-max-length": 10})
    worker_ini(tmp_path, queue)

    enqueued = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path,
                   stdin='{"url": "http://127.0.0.1:9/x"}\n')
    ran = cli("run", "-c", "worker.ini", cwd=tmp_path, timeout=60)

    for done in (enqueued, ran):
        assert done.returncode == 2, done.stderr
        assert "[provider] queue: the broker refused the queue" in done.stderr
        assert "PRECONDITION_FAILED" in done.stderr and "Traceback" not in done.stderr


# -- poison messages and dead letters -----------------------------------------------------


def test_poison_messages_are_dead_lettered_with_their_reason_and_can_be_requeued(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target
) -> None:
    # Retries wait a full second in their bucket: long enough that a worker which
    # forgot its delayed retries would finish (--until-empty) before the last attempt.
    worker_ini(tmp_path, queue, backoff=(1.0, 1.0), retry="jitter = 0\n")
    good = [job(f"good-{n:02d}", f"{fresh_target.url}/ok") for n in range(30)]
    publish_jobs(queue, good + [job("always-503", f"{fresh_target.url}/status/503", 3)])
    publish_raw(queue, b"this is not json", "raw-text")
    publish_raw(queue, b'{"nope": 1}', "raw-shape")
    publish_raw(queue, b"\xff\xfe not utf-8")

    done = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=60)

    assert done.returncode == 0, done.stderr
    dead = {message.message_id: message for message in peek(dead_queue_name(queue))}
    assert len(dead) == 4, dead
    nameless = next(key for key in dead if key.startswith("sha1-"))
    expected = {"raw-text": (1, "not JSON"), "raw-shape": (1, "unknown key(s) nope"),
                nameless: (1, "utf-8"), "always-503": (3, "gave up after 3 attempt(s)")}
    for message_id, (attempts, reason) in expected.items():
        assert dead[message_id].attempts == attempts, message_id
        assert reason in dead[message_id].headers["x-reason"], dead[message_id].headers
    records = {record["id"]: record for record in read_results(tmp_path / "results.jsonl")}
    assert {key: records[key]["attempts"] for key in expected} == {
        key: attempts for key, (attempts, _) in expected.items()}
    assert all(records[key]["status"] == "ok" for key, _, _ in good)
    assert fresh_target.stats()["total"] == len(good) + 3
    assert queue_exists(retry_queue_name(queue, bucket_for(1.0)))
    assert not queue_exists(retry_queue_name(queue, bucket_for(3600)))

    check_dead_commands(tmp_path, queue, set(expected))


def check_dead_commands(tmp_path: Path, queue: str, expected_ids: set[str]) -> None:
    """``dead list`` peeks without taking; ``dead requeue`` moves with fresh attempts."""
    listed = cli("dead", "list", "-c", "worker.ini", cwd=tmp_path)
    again = cli("dead", "list", "-c", "worker.ini", cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {entry["id"] for entry in entries} == expected_ids
    assert again.stdout == listed.stdout
    assert counts(queue)["dead"] == 4

    one = cli("dead", "requeue", entries[0]["ref"], "-c", "worker.ini", cwd=tmp_path)
    rest = cli("dead", "requeue", "--all", "-c", "worker.ini", cwd=tmp_path)

    assert (one.stdout.strip(), rest.stdout.strip()) == ("requeued 1 job(s)",
                                                         "requeued 3 job(s)")
    assert counts(queue) == {"ready": 4, "dead": 0, "consumers": 0}
    back = peek(queue)
    assert {message.message_id for message in back} == expected_ids
    assert {message.attempts for message in back} == {0}
    assert all("x-reason" not in message.headers for message in back)


# -- graceful shutdown --------------------------------------------------------------------


def test_sigterm_acks_finished_jobs_once_and_requeues_the_rest_unspent(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    worker_ini(tmp_path, queue, concurrency=5, consumer="shutdown_timeout = 10\n")
    ids = [f"slow-{n:02d}" for n in range(12)]
    publish_jobs(queue, [job(job_id, f"{fresh_target.url}/delay/1500") for job_id in ids])

    worker = workers.start()
    wait_until(lambda: fresh_target.stats()["in_flight"] == 5, "five requests in flight")
    signalled = time.monotonic()
    returncode = stop(worker)
    stopped_after = time.monotonic() - signalled

    assert returncode == 0, workers.log("worker")
    assert stopped_after < 3.0
    finished = read_results(tmp_path / "results.jsonl")
    assert len(finished) == 5 and {record["status"] for record in finished} == {"ok"}
    left = peek(queue)
    assert sorted(message.message_id or "" for message in left) == sorted(
        set(ids) - {record["id"] for record in finished})
    assert {(message.attempts, message.redelivered) for message in left} == {(0, False)}

    worker_ini(tmp_path, queue, name="wide.ini", concurrency=20)
    rerun = cli("run", "-c", "wide.ini", "--until-empty", cwd=tmp_path, timeout=60)

    assert rerun.returncode == 0, rerun.stderr
    seen = ids_in(tmp_path / "results.jsonl")
    assert set(seen) == set(ids) and set(seen.values()) == {1}
    assert fresh_target.stats()["total"] == len(ids)


def test_tasks_cancelled_at_the_shutdown_timeout_go_back_with_their_attempt_unspent(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target, workers: Workers
) -> None:
    # Prefetch above concurrency: three messages wait in the worker's buffer, unstarted,
    # and must go back unspent too.
    worker_ini(tmp_path, queue, concurrency=5, provider="prefetch = 8\n",
               consumer="task_timeout = 30\nshutdown_timeout = 1\n",
               retry="max_attempts = 1\n")
    ids = [f"hung-{n}" for n in range(8)]
    publish_jobs(queue, [job(job_id, f"{fresh_target.url}/hang", 1) for job_id in ids])

    worker = workers.start()
    wait_until(lambda: fresh_target.stats()["in_flight"] == 5, "five hanging requests")
    signalled = time.monotonic()
    returncode = stop(worker)
    stopped_after = time.monotonic() - signalled

    log = workers.log("worker")
    assert returncode == 0, log
    assert stopped_after < 5.0
    assert "cancelling 5 task(s)" in log
    # The three never started; the five cancelled ones join them when their cancellation
    # is settled before the buffer is returned, which depends on the order of greenlets.
    assert re.search(r"returning (3|8) unstarted message\(s\)", log), log
    assert read_results(tmp_path / "results.jsonl") == []
    left = peek(queue)
    # With max_attempts 1, a spent attempt would bury the job unrun on its next delivery.
    assert sorted(message.message_id or "" for message in left) == sorted(ids)
    assert {(message.attempts, message.redelivered) for message in left} == {(0, False)}


# -- heartbeats ---------------------------------------------------------------------------


def test_the_connection_survives_tasks_much_longer_than_the_heartbeat(
    rabbitmq: None, tmp_path: Path, queue: str, fresh_target: Target
) -> None:
    worker_ini(tmp_path, queue, concurrency=10, provider="heartbeat = 2\n",
               consumer="task_timeout = 30\n")
    ids = [f"long-{n}" for n in range(10)]
    publish_jobs(queue, [job(job_id, f"{fresh_target.url}/delay/6000") for job_id in ids])

    done = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=60)

    assert done.returncode == 0, done.stderr
    assert LOST not in done.stderr and RECONNECTED not in done.stderr, done.stderr
    seen = ids_in(tmp_path / "results.jsonl")
    assert set(seen) == set(ids) and set(seen.values()) == {1}
    assert fresh_target.stats()["total"] == len(ids)
    assert counts(queue) == {"ready": 0, "dead": 0, "consumers": 0}


# -- the producer, without gevent ---------------------------------------------------------

PRODUCER_SCRIPT = textwrap.dedent('''\
    import json, sys
    from async_consumer import producer
    from async_consumer.jobs import JobError

    ini, url = sys.argv[1], sys.argv[2]
    stored = producer.enqueue([{"id": "p-1", "url": url}, {"id": "p-2", "url": url,
                               "max_attempts": 2}], ini)
    try:
        producer.enqueue([{"id": "p-3", "url": url}, {"id": "p-4", "url": "ftp://x"}], ini)
        refused = None
    except JobError as error:
        refused = str(error)

    from gevent import monkey
    print(json.dumps({"stored": stored, "refused": refused,
                      "patched": monkey.is_module_patched("socket")}))
''')


def test_the_producer_publishes_from_plain_synchronous_code_and_from_the_cli(
    rabbitmq: None, tmp_path: Path, queue: str
) -> None:
    worker_ini(tmp_path, queue, retry="max_attempts = 4\n")
    (tmp_path / "enqueue_plain.py").write_text(PRODUCER_SCRIPT)

    plain = subprocess.run(
        [sys.executable, "enqueue_plain.py", "worker.ini", "http://127.0.0.1:9/hook"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )

    assert plain.returncode == 0, plain.stderr
    report = json.loads(plain.stdout)
    assert report == {"stored": 2, "patched": False, "refused": report["refused"]}
    assert "job 2" in report["refused"] and "ftp://x" in report["refused"]
    published = {message.message_id: message for message in peek(queue)}
    assert set(published) == {"p-1", "p-2"}
    assert published["p-1"].headers == {"x-attempts": 0, "x-max-attempts": 4}
    assert published["p-2"].headers == {"x-attempts": 0, "x-max-attempts": 2}
    assert json.loads(published["p-1"].body) == {"id": "p-1", "method": "GET",
                                                 "url": "http://127.0.0.1:9/hook"}

    lines = "".join(json.dumps({"id": f"c-{n}", "url": "http://127.0.0.1:9/x"}) + "\n"
                    for n in range(3))
    accepted = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path, stdin=lines)
    refused = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path,
                  stdin=lines + '{"url": "nope"}\n')

    assert accepted.returncode == 0, accepted.stderr
    assert f"accepted 3 job(s) into rabbitmq queue '{queue}'" in accepted.stdout
    assert refused.returncode == 1 and "nothing was enqueued" in refused.stderr
    assert counts(queue)["ready"] == 5


def test_a_publish_the_broker_cannot_route_fails_instead_of_vanishing(
    rabbitmq: None, queue: str
) -> None:
    with RabbitMQPublisher(BROKER_URL, queue) as publisher:
        delete_queues(queue)
        with pytest.raises(pika.exceptions.UnroutableError):
            publisher.publish_many([job("lost", "http://127.0.0.1:9/x")])


# -- in-process: gevent, ownership, small parts -------------------------------------------


def test_pika_under_the_patched_hub_uses_a_cooperative_poller_and_never_blocks_it(
    rabbitmq: None
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    gaps: list[float] = []

    def tick() -> None:
        last = time.monotonic()
        for _ in range(60):
            gevent.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    try:
        # pika picks epoll when it can; gevent's patching removes it, leaving poll.
        assert type(connection._impl.ioloop._poller).__name__ == "PollPoller"
        ticker = gevent.spawn(tick)
        while not ticker.dead:
            connection.process_data_events(time_limit=0.2)
    finally:
        connection.close()
    assert max(gaps) < 0.1, max(gaps)


def test_the_provider_refuses_to_start_in_a_process_that_is_not_patched(
    rabbitmq: None, tmp_path: Path, queue: str
) -> None:
    script = ("from async_consumer.rabbitmq_provider import RabbitMQProvider\n"
              f"RabbitMQProvider({BROKER_URL!r}, {queue!r}, str).start()\n")

    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    assert "PatchError" in done.stderr and "has not monkey-patched" in done.stderr


class _Sleepy(Promise):
    """A task that waits a little, and asks once for a retry when its body says so."""

    def __init__(self, body: str, attempt_log: Counter[str]) -> None:
        super().__init__(json.loads(body)["id"])
        self.retry_once = json.loads(body).get("retry_once", False)
        self.attempt_log = attempt_log

    def run(self) -> None:
        self.attempt_log[self.id] += 1
        gevent.sleep(0.02)
        if self.retry_once and self.attempt_log[self.id] == 1:
            raise RetryLater("once more", 0.05)


def test_only_the_owner_greenlet_touches_pika_and_the_worker_holds_no_more_than_prefetch(
    rabbitmq: None, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [json.dumps({"id": f"own-{n}", "retry_once": n % 10 == 0}) for n in range(200)]
    publish_jobs(queue, [(f"own-{n}", body, 3) for n, body in enumerate(bodies)])
    callers: set[gevent.Greenlet] = set()
    channel_class = pika.adapters.blocking_connection.BlockingChannel
    for name in ("basic_ack", "basic_publish", "basic_consume", "basic_cancel",
                 "queue_declare"):
        original = getattr(channel_class, name)
        monkeypatch.setattr(channel_class, name, recording(original, callers))
    connection_class = pika.BlockingConnection
    monkeypatch.setattr(connection_class, "process_data_events",
                        recording(connection_class.process_data_events, callers))
    attempt_log: Counter[str] = Counter()
    quiet = logging.getLogger("test_rabbitmq")
    provider = RabbitMQProvider(BROKER_URL, queue, lambda body: _Sleepy(body, attempt_log),
                                prefetch=8, logger=quiet)
    held: list[int] = []
    consumer = AsyncConsumer(provider, 8, 0, quiet, handle_signals=False)
    watcher = gevent.spawn(watch_held, provider, consumer, held)

    consumer.consume(until_empty=True)

    watcher.kill()
    monkeypatch.undo()
    assert callers == {provider._owner}
    assert sorted(attempt_log.values()) == [1] * 180 + [2] * 20
    assert provider.counts.ok == 200 and provider.counts.retried == 20
    assert max(held) <= 8
    assert counts(queue) == {"ready": 0, "dead": 0, "consumers": 0}


def recording(method, callers: set):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        callers.add(gevent.getcurrent())
        return method(*args, **kwargs)
    return wrapper


def watch_held(provider: RabbitMQProvider, consumer: AsyncConsumer, held: list[int]) -> None:
    """How many messages this worker holds: running plus buffered, sampled often."""
    while True:
        held.append(consumer.in_flight + len(provider._ready))
        gevent.sleep(PUMP_SECONDS / 2)


class _BrokenResults:
    """A results file on a full disk."""

    def __init__(self) -> None:
        self.tries = 0

    def write_many(self, records: object) -> int:
        self.tries += 1
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_a_message_is_not_acknowledged_while_its_result_line_cannot_be_written(
    rabbitmq: None, queue: str
) -> None:
    publish_jobs(queue, [(f"disk-{n}", json.dumps({"id": f"disk-{n}"}), 3) for n in range(3)])
    results = _BrokenResults()
    attempt_log: Counter[str] = Counter()
    quiet = logging.getLogger("test_rabbitmq")
    provider = RabbitMQProvider(BROKER_URL, queue, lambda body: _Sleepy(body, attempt_log),
                                results=results, logger=quiet)  # type: ignore[arg-type]
    consumer = AsyncConsumer(provider, 5, 0, quiet, handle_signals=False)
    gevent.spawn_later(2.0, consumer.stop)

    consumer.consume()

    assert sum(attempt_log.values()) == 3 and results.tries >= 2
    left = peek(queue)
    assert sorted(message.message_id or "" for message in left) == [
        "disk-0", "disk-1", "disk-2"]


def test_delays_round_up_to_a_few_buckets_and_the_url_password_is_masked(
    rabbitmq: None
) -> None:
    assert [bucket_for(s) for s in (0, -1, 0.05, 0.1, 0.101, 1.5, 7200)] == [
        0, 0, 100, 100, 250, 2000, 3_600_000]
    provider = RabbitMQProvider("amqp://app:s3cret@127.0.0.1:5672/%2F", "jobs", str)

    assert "s3cret" not in provider.describe()
    assert provider.describe() == "rabbitmq:amqp://app:***@127.0.0.1:5672/%2F queue=jobs " \
                                  "prefetch=10"


SHARED_PRODUCER_SCRIPT = """
import json, sys, threading, time
from async_consumer import producer

jobs = producer.Producer(sys.argv[1])
errors = []

def enqueue_many():
    for _ in range(25):
        try:
            jobs.enqueue([{"url": "http://127.0.0.1:9/x"}])
        except Exception as error:
            errors.append(repr(error))

threads = [threading.Thread(target=enqueue_many) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
time.sleep(6)
jobs.enqueue([{"url": "http://127.0.0.1:9/after-idle"}])
print(json.dumps({"errors": errors, "ready": jobs.publisher.counts()["ready"]}))
"""


def test_one_producer_serves_several_threads_and_outlives_an_idle_connection_drop(
    rabbitmq: None, tmp_path: Path, queue: str
) -> None:
    worker_ini(tmp_path, queue, provider="heartbeat = 1\n")
    (tmp_path / "shared.py").write_text(SHARED_PRODUCER_SCRIPT)

    run = subprocess.run([sys.executable, "shared.py", "worker.ini"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=90)

    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["errors"] == []
    assert report["ready"] >= 101
