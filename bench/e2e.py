"""The main job end to end: queue -> HTTP GET -> result line, for three job systems.

async_consumer runs through its command line (``enqueue``, then ``run --until-empty``);
Dramatiq and Celery run their own gevent workers on the modules ``bench.peer_*``.
The clock starts when the worker processes are started and stops when every job has
an ``ok`` line in the results file; CPU is that of the worker processes (with
everything they started), and, where /proc shows it, of the broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import Column, Context, Table, Variant, interleave
from bench.infra import (REPO, BenchError, broker_cpu_seconds, child_env, process_tree,
                         rabbitmq_delete, redis_delete_prefix, run_child, tail,
                         tree_cpu_seconds)

POLL_SECONDS = 0.01
#: The longest one end-to-end run may take, whatever its size.
RUN_TIMEOUT_SECONDS = 300.0
ENQUEUE_TIMEOUT_SECONDS = 300.0
STOP_SECONDS = 30.0

WORKER_INI = """\
[consumer]
concurrency = {concurrency}

[provider]
type = {broker}
{provider}

[http]
{http}

[results]
path = results.jsonl
fsync = {fsync}

[logging]
level = WARNING
file = worker.log
"""

SYSTEM_LABELS = {"ac": "async_consumer", "dramatiq": "Dramatiq", "celery": "Celery"}


def ini_transport_supported() -> bool:
    """Whether this build of async_consumer knows ``[http] transport``."""
    from async_consumer.settings import SETTINGS

    try:
        SETTINGS.get("http", "transport")
    except KeyError:
        return False
    return True


@dataclass
class Job:
    """One end-to-end run: which system, which broker, how big."""

    system: str
    broker: str
    jobs: int
    concurrency: int
    url: str
    processes: int = 1
    fsync: bool = False

    def queue_name(self, ctx: Context, rep: int) -> str:
        # The fixed tail keeps one run's name from being a prefix of another's.
        return f"bench-{ctx.run_id}-{self.system}-{self.broker}-p{self.processes}-{rep}-q"


def label(job: Job) -> str:
    name = f"{SYSTEM_LABELS[job.system]} {job.broker}"
    if job.system == "ac" and job.fsync:
        name += " (results fsync on)"
    return name


# -- enqueueing (not timed) and starting the workers (timed) ---------------------------


def prepare_async_consumer(job: Job, workdir: Path, queue: str, log: Any) -> None:
    provider = "path = queue.sqlite3" if job.broker == "sqlite" else f"queue = {queue}"
    http = "transport = fast" if ini_transport_supported() else ""
    (workdir / "worker.ini").write_text(WORKER_INI.format(
        concurrency=job.concurrency, broker=job.broker, provider=provider, http=http,
        fsync="true" if job.fsync else "false"))
    lines = "".join(json.dumps({"id": f"job-{i}", "url": job.url}) + "\n"
                    for i in range(job.jobs))
    (workdir / "jobs.jsonl").write_text(lines)

    enqueue = subprocess.run(
        [sys.executable, "-m", "async_consumer", "enqueue", "-c", "worker.ini", "jobs.jsonl"],
        cwd=workdir, stdout=log, stderr=log, env=child_env(), timeout=ENQUEUE_TIMEOUT_SECONDS)
    if enqueue.returncode != 0:
        raise BenchError(f"async-consumer enqueue failed: {tail(Path(log.name))}")


def launch_async_consumer(job: Job, workdir: Path, queue: str, log: Any) -> list:
    command = [sys.executable, "-m", "async_consumer", "run", "-c", "worker.ini",
               "--until-empty"]
    return [subprocess.Popen(command, cwd=workdir, stdout=log, stderr=log, env=child_env())
            for _ in range(job.processes)]


def peer_env(job: Job, workdir: Path, queue: str) -> dict[str, str]:
    return {"BENCH_BROKER": job.broker, "BENCH_QUEUE": queue,
            "BENCH_RESULTS": str(workdir / "results.jsonl"),
            "BENCH_POOL_SIZE": str(job.concurrency)}


def prepare_peer(job: Job, workdir: Path, queue: str, log: Any) -> None:
    run_child(f"bench.peer_{job.system}", [job.jobs, job.url], workdir,
              ENQUEUE_TIMEOUT_SECONDS, peer_env(job, workdir, queue))


def launch_dramatiq(job: Job, workdir: Path, queue: str, log: Any) -> list:
    worker = Path(sys.executable).parent / "dramatiq-gevent"
    return [subprocess.Popen(
        [str(worker), "--processes", str(job.processes), "--threads", str(job.concurrency),
         "bench.peer_dramatiq"],
        cwd=REPO, stdout=log, stderr=log, env=child_env(peer_env(job, workdir, queue)))]


def launch_celery(job: Job, workdir: Path, queue: str, log: Any) -> list:
    return [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.peer_celery", "worker",
         "-P", "gevent", "-c", str(job.concurrency), "-Q", queue, "-n", f"{queue}-{i}@%h",
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING"],
        cwd=REPO, stdout=log, stderr=log, env=child_env(peer_env(job, workdir, queue)))
        for i in range(job.processes)]


PREPARE = {"ac": prepare_async_consumer, "dramatiq": prepare_peer, "celery": prepare_peer}
LAUNCH = {"ac": launch_async_consumer, "dramatiq": launch_dramatiq, "celery": launch_celery}


def clean_broker(job: Job, queue: str) -> None:
    """Delete everything the run left on its broker (names carry the run id)."""
    if job.broker == "redis":
        redis_delete_prefix(queue)
        return
    if job.broker != "rabbitmq":
        return
    if job.system == "ac":
        from async_consumer.rabbitmq_provider import (RETRY_BUCKETS_MS, dead_queue_name,
                                                      retry_queue_name)

        rabbitmq_delete([queue, dead_queue_name(queue)]
                        + [retry_queue_name(queue, ms) for ms in RETRY_BUCKETS_MS])
    elif job.system == "dramatiq":
        rabbitmq_delete([queue, f"{queue}.DQ", f"{queue}.XQ"])
    else:
        rabbitmq_delete([queue], [queue])


# -- watching them ---------------------------------------------------------------------


class ResultLines:
    """Reads a results file as it is appended to: the distinct jobs done, the repeats.

    At-least-once systems may record a job twice (a redelivery); the run is over when
    every distinct job has an ``ok`` line, and repeats are reported, not counted.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.ok: set[str] = set()
        self.lines = 0
        self.failed: list[dict] = []

    def done(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        for line in complete:
            record = json.loads(line)
            self.lines += 1
            if record.get("status") == "ok":
                self.ok.add(record["id"])
            else:
                self.failed.append(record)
        return len(self.ok)

    @property
    def repeats(self) -> int:
        return self.lines - len(self.ok) - len(self.failed)


def reap(process: subprocess.Popen) -> float | None:
    """CPU seconds of a process that has exited (reaping it), or ``None`` if it runs."""
    if getattr(process, "bench_cpu", None) is not None:
        return float(process.bench_cpu)  # type: ignore[attr-defined]
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    process.bench_cpu = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
    return float(process.bench_cpu)  # type: ignore[attr-defined]


def workers_cpu(processes: list) -> float:
    total = 0.0
    for process in processes:
        done = reap(process)
        total += done if done is not None else tree_cpu_seconds(process.pid)
    return total


def stop_workers(processes: list) -> None:
    """SIGTERM each worker this run started; SIGKILL what is left after a grace period.

    Dramatiq's and Celery's workers stop their own children on SIGTERM; only if the
    parent has to be killed are its remaining children (by PID) killed too.
    """
    trees = {p.pid: process_tree(p.pid) for p in processes if reap(p) is None}
    for process in processes:
        if reap(process) is None:
            os.kill(process.pid, signal.SIGTERM)

    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and any(reap(p) is None for p in processes):
        time.sleep(0.05)

    for process in processes:
        if reap(process) is None:
            for pid in reversed(trees.get(process.pid, [process.pid])):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _, status = os.waitpid(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)


def wait_for_results(job: Job, processes: list, results: ResultLines, started: float,
                     log_path: Path) -> tuple[float, float]:
    """Wall and CPU seconds from ``started`` until every job has an ``ok`` line."""
    deadline = started + RUN_TIMEOUT_SECONDS
    while True:
        if results.done() >= job.jobs:
            return time.perf_counter() - started, workers_cpu(processes)
        if results.failed:
            raise BenchError(f"a job failed: {results.failed[0]}")
        if all(reap(p) is not None for p in processes):
            if results.done() >= job.jobs:
                continue
            raise BenchError(f"the workers exited after {len(results.ok)}/{job.jobs} jobs: "
                             f"{tail(log_path)}")
        if time.perf_counter() > deadline:
            raise BenchError(f"{len(results.ok)}/{job.jobs} jobs done after "
                             f"{RUN_TIMEOUT_SECONDS:.0f} s: {tail(log_path)}")
        time.sleep(POLL_SECONDS)


def run_job(ctx: Context, job: Job, rep: int) -> dict[str, Any]:
    """One end-to-end run; returns jobs/s and CPU-seconds per 1,000 jobs."""
    workdir = ctx.scratch(f"e2e-{job.system}-{job.broker}")
    queue = job.queue_name(ctx, rep)
    log_path = workdir / "bench.log"
    processes: list = []
    clean_broker(job, queue)
    try:
        with open(log_path, "ab") as log:
            PREPARE[job.system](job, workdir, queue, log)
            broker_before = broker_cpu_seconds(job.broker)
            started = time.perf_counter()
            processes = LAUNCH[job.system](job, workdir, queue, log)
            results = ResultLines(workdir / "results.jsonl")
            seconds, cpu = wait_for_results(job, processes, results, started, log_path)
            broker_after = broker_cpu_seconds(job.broker)
            stop_workers(processes)
    finally:
        stop_workers(processes)
        clean_broker(job, queue)

    sample: dict[str, Any] = {"seconds": seconds, "rate": job.jobs / seconds,
                              "cpu_per_1000": cpu / job.jobs * 1000,
                              "repeats": results.repeats}
    if broker_before is not None and broker_after is not None and job.broker != "sqlite":
        sample["broker_cpu_per_1000"] = (broker_after - broker_before) / job.jobs * 1000
    sample["summary"] = (f"{sample['rate']:,.0f} jobs/s, {sample['cpu_per_1000']:.2f} "
                         "CPU-s/1000 jobs" + (f", {results.repeats} job(s) recorded twice"
                                              if results.repeats else ""))
    return sample


def e2e_jobs(ctx: Context) -> list[Job]:
    o = ctx.options
    make = [("ac", "sqlite"), ("ac", "redis"), ("ac", "rabbitmq"), ("dramatiq", "redis"),
            ("dramatiq", "rabbitmq"), ("celery", "redis"), ("celery", "rabbitmq")]
    jobs = [Job(system, broker, o.e2e_jobs, o.e2e_concurrency, ctx.nginx_url)
            for system, broker in make]
    if o.e2e_fsync_row:
        jobs.insert(1, Job("ac", "sqlite", o.e2e_jobs, o.e2e_concurrency, ctx.nginx_url,
                           fsync=True))
    return jobs


def job_variant(ctx: Context, job: Job, key: str, name: str) -> Variant:
    """A variant that runs ``job`` end to end once per repetition."""
    def run(rep: int) -> dict[str, Any]:
        return run_job(ctx, job, rep)

    return Variant(key, name, run)


def job_key(job: Job) -> str:
    key = f"{job.system}-{job.broker}"
    if job.processes != 1:
        key += f"-p{job.processes}"
    return key + ("-fsync" if job.fsync else "")


def run_e2e(ctx: Context) -> Table:
    o = ctx.options
    jobs = e2e_jobs(ctx)
    variants = [job_variant(ctx, job, job_key(job), label(job)) for job in jobs]
    series = interleave(variants, o.repeat, "e2e")
    transport = "fast" if ini_transport_supported() else "the default (no transport key)"
    return Table(
        "e2e", f"5. Main job end to end: {o.e2e_jobs:,} jobs, concurrency "
        f"{o.e2e_concurrency}, one GET to nginx each, one worker process",
        f"python -m bench --only e2e --repeat {o.repeat} --e2e-jobs {o.e2e_jobs} "
        f"--e2e-concurrency {o.e2e_concurrency}",
        [Column("jobs/s", "rate"), Column("worker CPU-s / 1,000 jobs", "cpu_per_1000", 2),
         Column("broker CPU-s / 1,000 jobs", "broker_cpu_per_1000", 2, show_range=False),
         Column("jobs recorded twice", "repeats", show_range=False)],
        series,
        notes=[
            "Timed from starting the worker process until every job has an `ok` line in the "
            "results file; enqueueing happens before and is not timed. A job recorded twice "
            "(a redelivery) is counted once and shown in its own column.",
            f"async_consumer: `async-consumer enqueue` then `async-consumer run -c worker.ini "
            f"--until-empty`, `[http] transport` = {transport}, results appended without "
            "fsync (`[results] fsync = false`) like the peers' result lines.",
            f"Dramatiq: `dramatiq-gevent --processes 1 --threads {o.e2e_concurrency}`, an "
            "actor doing `requests.get` on a shared session (pool "
            f"{o.e2e_concurrency}) and appending its result line.",
            f"Celery: `celery worker -P gevent -c {o.e2e_concurrency}`, acks late, no result "
            "backend, the same task body; on RabbitMQ with heartbeats off "
            "(`broker_heartbeat = 0`), which Celery's gevent pool needs.",
        ],
    )
